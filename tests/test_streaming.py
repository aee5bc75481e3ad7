"""Folder and CSV datasets stream from disk: an image is decoded when its item is read and is not
kept afterwards, so memory does not grow with the dataset (CIFAR's small arrays are the exception).
Prediction's flat memory over thousands of images is tested in tests/test_predict.py."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from tests.data_builders import write_jpeg
from tresnet_ft.data import ImageDataModule, load_dataset

NUM_IMAGES, SIDE = 240, 64  # 12 KB decoded each, 2.9 MB in all


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for i in range(NUM_IMAGES):
        name = f"c{i % 3}/{i:04d}.jpg"
        write_jpeg(root / name, SIDE, SIDE, seed=i)
        rows.append(f"{name},c{i % 3}")
    (root / "list.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    return root


def _traced_growth(read_all) -> tuple[int, object]:
    """Bytes still allocated (numpy and Python) after ``read_all()`` returns, and what it returned."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = read_all()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("name", "root"), [("folder", ""), ("csv", "list.csv")])
def test_items_are_decoded_on_access_and_not_kept(photos, name, root):
    dataset = load_dataset(name, photos / root, "train", val_fraction=0.1)
    decoded_total = len(dataset) * SIDE * SIDE * 3
    assert len(dataset) >= 200 and not hasattr(dataset, "images")

    def read_every_item():
        for index in range(len(dataset)):
            image, _ = dataset[index]
            assert image.shape == (SIDE, SIDE, 3)

    growth, _ = _traced_growth(read_every_item)
    assert growth < decoded_total / 20, (growth, decoded_total)
    # The measurement sees decoded images when something does keep them:
    held, images = _traced_growth(lambda: [dataset[i][0] for i in range(len(dataset))])
    assert held > 0.9 * decoded_total and len(images) == len(dataset)


def test_the_datamodules_loader_streams_too(photos):
    data = ImageDataModule(
        "folder",
        str(photos),
        image_size=32,
        batch_size=16,
        num_workers=0,
        val_fraction=0.1,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    sum(
        len(images) for images, _ in loader
    )  # one epoch first: one-time setup is not growth

    def read_two_epochs():
        return sum(len(images) for _ in range(2) for images, _ in loader)

    growth, seen = _traced_growth(read_two_epochs)
    assert seen >= 2 * 200
    assert growth < len(data.datasets["train"]) * SIDE * SIDE * 3 / 20, (
        growth
    )  # decoded: 20x more
