"""Oxford Flowers-102: ``flowers-102/jpg/image_NNNNN.jpg``, ``imagelabels.mat``, ``setid.mat``.

``imagelabels.mat`` holds ``labels``: one class per image (1-based). ``setid.mat`` holds the
official splits as 1-based image ids: ``trnid`` (1,020 images), ``valid`` (1,020), ``tstid``
(6,149).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetInfo, ImageFileDataset, check_split
from ..fetch.download import RemoteFile, ensure_dataset_files
from .matfiles import load_mat
from .unreadable import keep_readable
from ..errors import InvalidValueError

FOLDER = "flowers-102"
_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
SOURCES = (
    RemoteFile(
        _URL + "102flowers.tgz",
        "102flowers.tgz",
        "52808999861908f626f3c1f4e79d11fa",
        extract_to=".",
    ),
    RemoteFile(_URL + "imagelabels.mat", "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
    RemoteFile(_URL + "setid.mat", "setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c"),
)
REQUIRED = ("jpg", "imagelabels.mat", "setid.mat")
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}

# The dataset ships only numbers; these are the names in common use, in label order.
FLOWERS102_CLASSES = (
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink-yellow dahlia",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "ball moss",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
)
assert len(FLOWERS102_CLASSES) == 102


def prepare_flowers(root: Path, download: bool, progress: bool = True) -> None:
    """Download the three published files into ``root/flowers-102`` unless they are there."""
    ensure_dataset_files("flowers102", root / FOLDER, REQUIRED, SOURCES, download, progress)


def describe_flowers(root: Path | None = None) -> DatasetInfo:
    """Task and class names without touching the disk."""
    return DatasetInfo("single_label", FLOWERS102_CLASSES)


def load_flowers(root: Path, split: str) -> ImageFileDataset:
    """Load one official split (train 1,020 / val 1,020 / test 6,149 images)."""
    check_split(split)
    folder = root / FOLDER
    ensure_dataset_files("flowers102", folder, REQUIRED, SOURCES, download=False)
    labels = np.asarray(load_mat(folder / "imagelabels.mat")["labels"], dtype=np.int64).ravel()
    ids = np.asarray(load_mat(folder / "setid.mat")[SPLIT_KEYS[split]], dtype=np.int64).ravel()
    if labels.min() < 1 or labels.max() > len(FLOWERS102_CLASSES) or ids.max() > len(labels):
        raise InvalidValueError(
            f"Expected 1-based labels in [1, 102] and image ids in [1, {len(labels)}] in "
            f"{folder}, but got labels [{labels.min()}, {labels.max()}] and ids up to {ids.max()}."
        )
    paths = [folder / "jpg" / f"image_{image_id:05d}.jpg" for image_id in ids]
    targets = labels[ids - 1] - 1
    paths, targets = keep_readable(paths, targets, f"flowers102/{split}")
    return ImageFileDataset(paths, targets, FLOWERS102_CLASSES)
