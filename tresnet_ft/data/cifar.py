"""CIFAR-10 and CIFAR-100 from the official Python-pickle archives, held in memory.

Folder names match torchvision's (``cifar-10-batches-py``, ``cifar-100-python``) so existing
downloads are reused. Each pickle holds ``data``: ``uint8 [N, 3072]`` (the red, green and blue
32x32 planes, row-major) and the labels. ``val`` is the official test set, the number papers
report, unless ``val_fraction`` asks for a holdout from the training set.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DatasetInfo, InMemoryImageDataset, check_split
from ..fetch.download import RemoteFile, ensure_dataset_files
from .splits import holdout_mask
from ..errors import InvalidValueError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


@dataclass(frozen=True)
class CifarSpec:
    """Everything that differs between CIFAR-10 and CIFAR-100: published facts only."""

    name: str
    folder: str  # extracted folder name inside the data root
    archive: RemoteFile
    train_files: dict[str, str]  # pickle name -> MD5
    test_files: dict[str, str]
    meta_file: tuple[str, str]  # (pickle name, MD5)
    label_key: str
    names_key: str
    classes: tuple[str, ...]


CIFAR10 = CifarSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive=RemoteFile(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        extract_to=".",
    ),
    train_files={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    },
    test_files={"test_batch": "40351d587109b95175f43aff81a1287e"},
    meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    label_key="labels",
    names_key="label_names",
    classes=CIFAR10_CLASSES,
)
CIFAR100 = CifarSpec(
    name="cifar100",
    folder="cifar-100-python",
    archive=RemoteFile(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        extract_to=".",
    ),
    train_files={"train": "16019d7e3df5f24257cddd939b257f8d"},
    test_files={"test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
    label_key="fine_labels",
    names_key="fine_label_names",
    classes=CIFAR100_CLASSES,
)


def cifar_files(spec: CifarSpec) -> list[str]:
    """The pickles a complete copy holds, relative to the data root."""
    names = [*spec.train_files, *spec.test_files, spec.meta_file[0]]
    return [f"{spec.folder}/{name}" for name in names]


def prepare_cifar(spec: CifarSpec, root: Path, download: bool, progress: bool = True) -> None:
    """Download and extract the archive into ``root`` unless the pickles are already there."""
    ensure_dataset_files(spec.name, root, cifar_files(spec), [spec.archive], download, progress)


def describe_cifar(spec: CifarSpec, root: Path | None = None) -> DatasetInfo:
    """Task and class names without touching the disk."""
    return DatasetInfo("single_label", spec.classes)


def load_cifar(
    spec: CifarSpec, root: Path, split: str, val_fraction: float = 0.0, seed: int = 0
) -> InMemoryImageDataset:
    """Load one split as an in-memory dataset of ``uint8 [N, 32, 32, 3]`` images.

    Args:
        val_fraction: 0 makes ``val`` the official test set; a value in (0, 1) holds out that
            share of the training set (stratified, deterministic) as ``val`` instead.
        seed: changes which images the holdout picks.
    """
    check_split(split)
    ensure_dataset_files(spec.name, root, cifar_files(spec), [spec.archive], download=False)
    classes = _read_pickle(root / spec.folder / spec.meta_file[0])[spec.names_key]
    use_test_files = split == "test" or (split == "val" and not val_fraction)
    files = spec.test_files if use_test_files else spec.train_files
    images, labels = _read_batches(spec, root, list(files))
    dataset = InMemoryImageDataset(images, labels, classes)
    if use_test_files or not val_fraction:
        return dataset
    is_val = holdout_mask(range(len(dataset)), dataset.targets, val_fraction, seed)
    return dataset.select(np.flatnonzero(is_val if split == "val" else ~is_val))


def _read_batches(spec: CifarSpec, root: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    batches = [_read_pickle(root / spec.folder / name) for name in names]
    data = np.concatenate([np.asarray(batch["data"], dtype=np.uint8) for batch in batches])
    labels = np.concatenate(
        [np.asarray(batch[spec.label_key], dtype=np.int64) for batch in batches]
    )
    # Planes [N, 3, 32, 32] -> [N, 32, 32, 3]; one contiguous copy so items are cheap views.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


# What the published CIFAR pickles reference: NumPy arrays and the byte-string codec. Anything
# else (a class or function that would run on load) is refused, so a doctored file cannot run code.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR batch never does")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        try:
            # The archives were pickled by Python 2; latin1 maps its byte strings one-to-one.
            return _ArraysOnlyUnpickler(handle, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            raise InvalidValueError(
                f"Refusing to read {path}: {error}, and unpickling it could run code. Fix: delete "
                f"the folder {path.parent} and let it be downloaded again (or extract the official "
                "archive there yourself)."
            ) from None
