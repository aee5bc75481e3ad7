"""The quickstart shapes written as class folders and as a tag CSV, read back by the user loaders."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tresnet_ft.data import (
    QuickstartDataset,
    describe_dataset,
    load_dataset,
    write_quickstart_folder,
    write_quickstart_table,
)
from tresnet_ft.data.quickstart import SHAPES

SIZES = {"train": 10, "val": 5, "test": 3}


def test_folder_layout_reads_back_with_the_generated_labels_and_pixels(tmp_path):
    root = write_quickstart_folder(tmp_path / "shapes", num_images=SIZES, image_size=32, seed=3)

    assert root == tmp_path / "shapes"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    assert len(list(root.glob("train/*/*.png"))) == 10
    assert describe_dataset("folder", root).classes == tuple(sorted(SHAPES))
    for split, count in SIZES.items():
        loaded = load_dataset("folder", root, split=split)
        generated = QuickstartDataset(split, count, image_size=32, seed=3)
        assert len(loaded) == count
        # the folder loader sorts files within each class; match them up by file name
        for path, label in zip(loaded.paths, loaded.targets):
            index = int(path.rsplit("_", 1)[1].split(".")[0])
            _, expected = generated[index]
            assert loaded.classes[label] == SHAPES[expected]
        first_image, _ = loaded[0]
        index = int(loaded.paths[0].rsplit("_", 1)[1].split(".")[0])
        np.testing.assert_array_equal(first_image, generated[index][0])  # PNG is lossless


def test_folder_writes_only_the_splits_asked_for(tmp_path):
    root = write_quickstart_folder(tmp_path, num_images={"train": 5}, image_size=16)
    assert [p.name for p in root.iterdir()] == ["train"]
    assert sorted(p.parent.name for p in root.glob("train/*/*.png")) == sorted(
        SHAPES
    )  # one per class


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"train": 4}, "at least 5 training image"),
        ({"val": 4}, "at least 5 training image"),
        ({"train": 10, "holdout": 3}, "holdout"),
        ({"train": 10, "val": 0}, "at least one image per split"),
    ],
)
def test_folder_rejects_bad_sizes(tmp_path, sizes, message):
    with pytest.raises(ValueError, match=message):
        write_quickstart_folder(tmp_path, num_images=sizes)


def test_multilabel_table_reads_back_with_the_generated_tags(tmp_path):
    table = write_quickstart_table(tmp_path / "tags", num_images=SIZES, image_size=32, seed=1)

    assert table == tmp_path / "tags" / "tags.csv"
    rows = list(csv.DictReader(table.open()))
    assert [r["split"] for r in rows] == ["train"] * 10 + ["val"] * 5 + ["test"] * 3
    assert any(";" in r["labels"] for r in rows)  # several tags on some rows
    info = describe_dataset("csv", table)
    assert info.task == "multi_label" and info.classes == tuple(sorted(SHAPES))
    for split, count in SIZES.items():
        loaded = load_dataset("csv", table, split=split)
        generated = QuickstartDataset(split, count, image_size=32, multi_label=True, seed=1)
        assert loaded.task == "multi_label" and len(loaded) == count
        for index in range(count):
            got = {loaded.classes[k] for k in np.flatnonzero(loaded.targets[index])}
            expected = {SHAPES[k] for k in np.flatnonzero(generated.target(index))}
            assert got == expected and 1 <= len(got) <= 3
        np.testing.assert_array_equal(loaded[count - 1][0], generated[count - 1][0])


def test_single_label_table_has_one_tag_per_row(tmp_path):
    table = write_quickstart_table(
        tmp_path, num_images={"train": 10, "val": 5}, image_size=16, multi_label=False
    )
    loaded = load_dataset("csv", table, split="train")
    assert loaded.task == "single_label"
    assert [loaded.classes[t] for t in loaded.targets] == [SHAPES[i % 5] for i in range(10)]


def test_table_refuses_a_train_split_missing_a_tag(tmp_path):
    # two multi-label images show at most six shapes; this seed leaves one of the five out
    seed = next(
        s
        for s in range(50)
        if not QuickstartDataset("train", 2, 16, multi_label=True, seed=s).targets.any(axis=0).all()
    )
    with pytest.raises(ValueError, match="No training image shows"):
        write_quickstart_table(tmp_path, num_images={"train": 2}, image_size=16, seed=seed)
    assert not (tmp_path / "tags.csv").exists()
