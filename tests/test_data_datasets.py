"""Each dataset family read from small copies of its official layout."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.data_builders import (
    CAR_NAMES,
    md5_of,
    serve_files,
    write_cars_all_in_one,
    write_cars_devkit,
    write_cifar_archive,
    write_flowers,
    write_jpeg,
)
from tresnet_ft.data import (
    DatasetNotFoundError,
    QuickstartDataset,
    cifar,
    describe_dataset,
    flowers,
    load_dataset,
)
from tresnet_ft.fetch.archives import extract_archive
from tresnet_ft.fetch.download import RemoteFile
from tresnet_ft.data.registry import DATASETS

# -- CIFAR -------------------------------------------------------------------------------------


@pytest.fixture
def cifar10_root(tmp_path):
    archive, batches = write_cifar_archive(tmp_path, cifar.CIFAR10, per_file=40)
    extract_archive(archive, tmp_path / "data", progress=False)
    return tmp_path / "data", batches


def test_cifar10_pixels_labels_and_classes_match_the_pickles(cifar10_root):
    root, batches = cifar10_root
    train = load_dataset("cifar10", root, "train", download=False)
    assert len(train) == 200 and train.classes == list(cifar.CIFAR10_CLASSES)
    assert train.images.dtype == np.uint8 and train.images.shape == (200, 32, 32, 3)
    first = batches["data_batch_1"]
    image, label = train[3]
    # Row 3 of data_batch_1: 1024 red values, then green, then blue, each 32x32 row-major.
    planes = first["data"][3].reshape(3, 32, 32)
    assert np.array_equal(image[..., 0], planes[0]) and np.array_equal(image[..., 2], planes[2])
    assert label == first["labels"][3]
    last_image, last_label = train[199]
    assert last_label == batches["data_batch_5"]["labels"][39]
    assert np.array_equal(
        last_image[..., 1], batches["data_batch_5"]["data"][39].reshape(3, 32, 32)[1]
    )


def test_cifar_val_is_the_official_test_set_unless_a_holdout_is_asked(cifar10_root):
    root, batches = cifar10_root
    val = load_dataset("cifar10", root, "val", download=False)
    test = load_dataset("cifar10", root, "test", download=False)
    assert len(val) == 40 and np.array_equal(val.targets, batches["test_batch"]["labels"])
    assert np.array_equal(val.images, test.images)

    train = load_dataset("cifar10", root, "train", download=False, val_fraction=0.25)
    held = load_dataset("cifar10", root, "val", download=False, val_fraction=0.25)
    assert len(train) + len(held) == 200 and 40 <= len(held) <= 60
    # Disjoint, and deterministic: the same call gives the same images.
    all_rows = {row.tobytes() for row in train.images} | {row.tobytes() for row in held.images}
    assert len(all_rows) == 200
    again = load_dataset("cifar10", root, "val", download=False, val_fraction=0.25)
    assert np.array_equal(again.images, held.images)
    # Stratified: every class with 2+ training images has one in the holdout.
    full = load_dataset("cifar10", root, "train", download=False)
    present = np.flatnonzero(np.bincount(full.targets, minlength=10) >= 2)
    assert set(present) <= set(held.targets.tolist())


def test_cifar100_reads_fine_labels(tmp_path):
    archive, batches = write_cifar_archive(tmp_path, cifar.CIFAR100, per_file=30)
    extract_archive(archive, tmp_path, progress=False)
    train = load_dataset("cifar100", tmp_path, "train", download=False)
    assert len(train.classes) == 100 and train.classes[1] == "aquarium_fish"
    assert np.array_equal(train.targets, batches["train"]["fine_labels"])


def test_cifar_download_verify_extract_over_loopback_http(tmp_path):
    archive, batches = write_cifar_archive(tmp_path, cifar.CIFAR10, per_file=10)
    with serve_files({archive.name: archive.read_bytes()}) as server:
        spec = dataclasses.replace(
            cifar.CIFAR10,
            archive=RemoteFile(server.url(archive.name), archive.name, md5_of(archive), "."),
        )
        root = tmp_path / "root"
        cifar.prepare_cifar(spec, root, download=True, progress=False)
        assert (root / archive.name).exists() and len(server.requests) == 1
        cifar.prepare_cifar(spec, root, download=True, progress=False)  # in place: nothing fetched
        assert len(server.requests) == 1
    test = cifar.load_cifar(spec, root, "test")
    assert np.array_equal(test.targets, batches["test_batch"]["labels"])


def test_cifar_describe_needs_no_files(tmp_path):
    info = describe_dataset("cifar100", tmp_path / "empty")
    assert info.task == "single_label" and info.num_classes == 100


def test_cifar_missing_offline_names_folder_and_archive(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar10", tmp_path, "train", download=False)
    message = str(caught.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "cifar-10-batches-py/data_batch_1" in message and "cifar-10-python.tar.gz" in message
    assert "c58f30108f718f92721af3b95e74349a" in message


# -- Flowers-102 -------------------------------------------------------------------------------


def test_flowers_official_splits_and_one_based_labels(tmp_path):
    truth = write_flowers(tmp_path / "flowers-102")
    for split in ("train", "val", "test"):
        dataset = load_dataset("flowers102", tmp_path, split, download=False)
        ids = truth[split]
        assert len(dataset) == len(ids)
        assert dataset.paths[0].endswith(f"jpg/image_{ids[0]:05d}.jpg")
        assert np.array_equal(dataset.targets, truth["labels"][ids - 1] - 1)
    image, label = dataset[0]
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert len(dataset.classes) == 102 and dataset.classes[0] == "pink primrose"


def test_flowers_download_path_with_local_archive(tmp_path, monkeypatch):
    source = tmp_path / "published"
    write_flowers(source)
    archive = tmp_path / "102flowers.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "jpg", arcname="jpg")
    files = {
        "102flowers.tgz": archive.read_bytes(),
        "imagelabels.mat": (source / "imagelabels.mat").read_bytes(),
        "setid.mat": (source / "setid.mat").read_bytes(),
    }
    with serve_files(files) as server:
        sources = tuple(
            RemoteFile(
                server.url(s.filename),
                s.filename,
                hashlib.md5(files[s.filename]).hexdigest(),
                s.extract_to,
            )
            for s in flowers.SOURCES
        )
        monkeypatch.setattr(flowers, "SOURCES", sources)
        test = load_dataset("flowers102", tmp_path / "root", "test", progress=False)
    assert len(test) == 5 and (tmp_path / "root/flowers-102/jpg/image_00001.jpg").exists()


# -- Stanford Cars -----------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_cars_devkit_layout(tmp_path, nested):
    truth = write_cars_devkit(tmp_path / "stanford_cars", nested=nested)
    train = load_dataset("stanford_cars", tmp_path, "train")
    test = load_dataset("stanford_cars", tmp_path, "test")
    assert (
        train.classes == CAR_NAMES and describe_dataset("stanford_cars", tmp_path).num_classes == 3
    )
    assert np.array_equal(train.targets, np.array(truth["train"]) - 1)
    assert np.array_equal(test.targets, np.array(truth["test"]) - 1)
    assert train[0][0].shape == (30, 45, 3)
    val = load_dataset("stanford_cars", tmp_path, "val")
    assert val.paths == test.paths  # val is the official test set by default


def test_cars_all_in_one_layout_and_holdout(tmp_path):
    truth = write_cars_all_in_one(tmp_path / "stanford_cars", num=12)
    test = load_dataset("stanford_cars", tmp_path, "test")
    assert np.array_equal(test.targets, [c - 1 for c, is_test in truth if is_test])
    train = load_dataset("stanford_cars", tmp_path, "train", val_fraction=0.34)
    val = load_dataset("stanford_cars", tmp_path, "val", val_fraction=0.34)
    assert len(train) + len(val) == 6 and set(train.paths).isdisjoint(val.paths)


def test_cars_missing_says_where_to_put_which_files(tmp_path):
    (tmp_path / "stanford_cars" / "cars_train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("stanford_cars", tmp_path, "train")
    message = str(caught.value)
    assert str(tmp_path / "stanford_cars") in message
    for name in (
        "devkit/cars_meta.mat",
        "devkit/cars_train_annos.mat",
        "cars_test",
        "cars_test_annos_withlabels.mat",
        "car_ims",
    ):
        assert name in message


# -- folders -----------------------------------------------------------------------------------


def _folder(root, layout: dict[str, int]) -> None:
    for i, (relative, count) in enumerate(layout.items()):
        for j in range(count):
            write_jpeg(root / relative / f"{j:03d}.jpg", 20, 24, seed=100 * i + j)


def test_folder_with_split_folders(tmp_path):
    _folder(tmp_path, {"train/cat": 3, "train/dog": 2, "val/cat": 1, "val/dog": 1, "test/dog": 2})
    (tmp_path / "train/cat/.DS_Store").write_bytes(b"junk")
    (tmp_path / "train/.hidden_class").mkdir()
    (tmp_path / "train/cat/notes.txt").write_text("not an image")
    train = load_dataset("folder", tmp_path, "train")
    assert train.classes == ["cat", "dog"] and len(train) == 5
    assert train.targets.tolist() == [0, 0, 0, 1, 1]
    assert load_dataset("folder", tmp_path, "val").targets.tolist() == [0, 1]
    assert load_dataset("folder", tmp_path, "test").targets.tolist() == [1, 1]


def test_flat_folder_gets_a_stratified_deterministic_holdout(tmp_path):
    _folder(tmp_path, {"a": 10, "b": 10, "c": 4})
    train = load_dataset("folder", tmp_path, "train", val_fraction=0.2)
    val = load_dataset("folder", tmp_path, "val", val_fraction=0.2)
    assert np.bincount(val.targets).tolist() == [2, 2, 1]
    assert len(train) == 19 and set(train.paths).isdisjoint(val.paths)
    assert load_dataset("folder", tmp_path, "val", val_fraction=0.2).paths == val.paths
    # Adding images to one class leaves the other classes' holdout exactly as it was.
    _folder(tmp_path, {"a/extra": 5})
    grown = load_dataset("folder", tmp_path, "val", val_fraction=0.2)
    assert [p for p in grown.paths if "/a/" not in p] == [p for p in val.paths if "/a/" not in p]
    with pytest.raises(FileNotFoundError, match="test/"):
        load_dataset("folder", tmp_path, "test")


def test_folder_class_only_in_validation_is_an_error(tmp_path):
    _folder(tmp_path, {"train/cat": 2, "val/cat": 1, "val/zebra": 1})
    with pytest.raises(ValueError, match=r"\['zebra'\].*no folder in"):
        load_dataset("folder", tmp_path, "val")


def test_folder_empty_class_is_an_error(tmp_path):
    _folder(tmp_path, {"train/cat": 2, "val/cat": 1})
    (tmp_path / "train/dog").mkdir()
    with pytest.raises(ValueError, match=r"\['dog'\] have no readable training image"):
        load_dataset("folder", tmp_path, "train")


@pytest.mark.parametrize("layout", ["train/cat", "cat"])
def test_a_single_class_folder_is_refused_naming_the_folder(tmp_path, layout):
    _folder(tmp_path, {layout: 3})
    train_dir = tmp_path / layout.split("/")[0] if "/" in layout else tmp_path
    for describe_or_load in (lambda: describe_dataset("folder", tmp_path),
                             lambda: load_dataset("folder", tmp_path, "train")):
        with pytest.raises(ValueError) as caught:
            describe_or_load()
        assert f"Expected at least 2 class folders in {train_dir} for single-label training, but found one: 'cat'" \
            in str(caught.value)


def test_a_flat_folder_holdout_is_never_empty_or_an_error_naming_the_folder(tmp_path):
    spare = tmp_path / "spare"
    _folder(spare, {"a": 1, "b": 1, "c": 2})  # only c can spare an image for validation
    val = load_dataset("folder", spare, "val")
    assert [Path(p).parent.name for p in val.paths] == ["c"]
    assert sorted(load_dataset("folder", spare, "train").targets.tolist()) == [0, 1, 2]
    lonely = tmp_path / "lonely"
    _folder(lonely, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=rf"with at least 2 images in {lonely} to hold out a validation split"):
        load_dataset("folder", lonely, "val")


def test_many_classes_only_in_validation_are_cut_to_a_short_line(tmp_path):
    _folder(tmp_path, {"train/cat": 1, "train/dog": 1, **{f"val/new{k:02d}": 1 for k in range(15)}})
    with pytest.raises(ValueError) as caught:
        load_dataset("folder", tmp_path, "val")
    message = str(caught.value)
    assert "Classes ['new00', 'new01'," in message and "'new09', ...] and 5 more have images in" in message


def test_folder_bad_files_are_excluded_and_reported_once(tmp_path, caplog):
    _folder(tmp_path, {"train/cat": 3, "train/dog": 2, "val/cat": 1, "val/dog": 1})
    (tmp_path / "train/cat/empty.jpg").write_bytes(b"")
    (tmp_path / "train/dog/page.jpg").write_bytes(b"<html>not found</html>")
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.data"):
        train = load_dataset("folder", tmp_path, "train")
    assert len(train) == 5
    reports = [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]
    assert len(reports) == 1
    assert "excluded 2 unreadable image file(s) of 7" in reports[0]
    assert "empty.jpg (zero-byte file)" in reports[0] and "page.jpg (not an image" in reports[0]


# -- quickstart and the registry ---------------------------------------------------------------


def test_quickstart_is_deterministic_and_balanced():
    first, again = QuickstartDataset("train", 20), QuickstartDataset("train", 20)
    assert np.array_equal(first[7][0], again[7][0]) and first[7][1] == 7 % 5
    assert not np.array_equal(first[0][0], QuickstartDataset("val", 20)[0][0])
    assert first.class_counts().tolist() == [4, 4, 4, 4, 4]
    assert first[0][0].shape == (64, 64, 3) and first[0][0].dtype == np.uint8


def test_quickstart_sizes_by_split():
    sizes = {"train": 40}
    assert len(load_dataset("quickstart", split="train", num_images=sizes)) == 40
    assert len(load_dataset("quickstart", split="val", num_images=sizes)) == 100  # its default
    assert len(load_dataset("quickstart", split="val", num_images=12)) == 12  # one count for all
    with pytest.raises(ValueError, match="num_images keys"):
        load_dataset("quickstart", split="train", num_images={"training": 40})


def test_quickstart_multilabel_shapes_are_drawn_where_targets_say():
    dataset = load_dataset("quickstart_multilabel", split="train", num_images=30, image_size=96)
    assert dataset.task == "multi_label" and dataset.classes == [
        "circle",
        "square",
        "triangle",
        "cross",
        "diamond",
    ]
    counts = dataset.targets.sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= 3 and (counts > 1).any()
    plain = QuickstartDataset("train", 30, 96, multi_label=True)
    assert np.array_equal(dataset[4][1], plain[4][1])


def test_every_registered_dataset_describes_and_unknown_names_fail(tmp_path):
    assert set(DATASETS) >= {
        "cifar10",
        "cifar100",
        "flowers102",
        "stanford_cars",
        "folder",
        "csv",
        "jsonl",
        "quickstart",
        "quickstart_multilabel",
    }
    with pytest.raises(ValueError, match="Expected dataset to be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="expected root to be its folder or file"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="does not take options"):
        load_dataset("flowers102", tmp_path, val_fraction=0.1)


def test_a_doctored_cifar_pickle_is_refused_without_running_code(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    archive, _ = write_cifar_archive(tmp_path, cifar.CIFAR10, per_file=4)
    extract_archive(archive, tmp_path, progress=False)
    batch = tmp_path / cifar.CIFAR10.folder / next(iter(cifar.CIFAR10.train_files))
    batch.write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"Refusing to read .*data_batch_1: it references io\.open"):
        load_dataset("cifar10", tmp_path, "train", download=False)
    assert not (tmp_path / "pwned").exists()
