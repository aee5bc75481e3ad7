"""CSV / JSONL tag tables in their documented layouts: multi- and single-label, separators,
holdouts, missing images, and paths that leave the table's folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.data_builders import write_jpeg
from tresnet_ft.data import describe_dataset, load_dataset

# -- CSV / JSONL -------------------------------------------------------------------------------


def _images(folder, count):
    for i in range(count):
        write_jpeg(folder / "img" / f"{i}.jpg", 16, 16, seed=i)


def test_csv_multi_label_with_semicolons_and_split_column(tmp_path):
    _images(tmp_path, 5)
    (tmp_path / "tags.csv").write_text(
        "image,labels,split\n"
        "img/0.jpg,cat;dog,train\n"
        "img/1.jpg,dog,train\n"
        "img/2.jpg,sky;cat;dog,train\n"
        "img/3.jpg,,train\n"
        "img/4.jpg,dog;cat,val\n"
    )
    train = load_dataset("csv", tmp_path / "tags.csv", "train")
    assert train.task == "multi_label" and train.classes == ["cat", "dog", "sky"]
    assert train.targets.tolist() == [[1, 1, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]]
    image, target = train[2]
    assert image.shape == (16, 16, 3) and target.dtype == np.float32
    val = load_dataset("csv", tmp_path, "val")  # the folder holding exactly one table also works
    assert val.targets.tolist() == [[1, 1, 0]]
    info = describe_dataset("csv", tmp_path / "tags.csv")
    assert info.task == "multi_label" and info.num_classes == 3


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (["a b", "b", "c"], [["a", "b"], ["b"], ["c"]]),  # whitespace when no ; or |
        (
            ["golden retriever|cat", "cat", "golden retriever"],
            [["cat", "golden retriever"], ["cat"], ["golden retriever"]],
        ),
    ],
)
def test_csv_tag_separators(tmp_path, cells, expected):
    _images(tmp_path, 3)
    # Every row in train by its split column: a holdout always takes at least one row to val.
    rows = "\n".join(f"img/{i}.jpg,{cell},train" for i, cell in enumerate(cells))
    (tmp_path / "t.csv").write_text(f"image,labels,split\n{rows}\n")
    dataset = load_dataset("csv", tmp_path / "t.csv", "train")
    names = [[dataset.classes[k] for k in np.flatnonzero(t)] for t in dataset.targets]
    assert sorted(names) == sorted(expected)


def test_csv_single_label_holdout(tmp_path):
    _images(tmp_path, 20)
    rows = "\n".join(f"img/{i}.jpg,{'even' if i % 2 == 0 else 'odd'}" for i in range(20))
    (tmp_path / "t.csv").write_text(f"image,labels\n{rows}\n")
    train = load_dataset("csv", tmp_path / "t.csv", "train", val_fraction=0.2)
    val = load_dataset("csv", tmp_path / "t.csv", "val", val_fraction=0.2)
    assert train.task == "single_label" and train.classes == ["even", "odd"]
    assert np.bincount(val.targets).tolist() == [2, 2] and len(train) == 16
    assert train.targets.dtype == np.int64


def test_csv_missing_images_are_listed_before_training(tmp_path):
    _images(tmp_path, 1)
    (tmp_path / "t.csv").write_text("image,labels\nimg/0.jpg,a\nimg/nope.jpg,b\nimg/gone.jpg,a\n")
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\).*nope\.jpg.*gone\.jpg"):
        load_dataset("csv", tmp_path / "t.csv", "train")


def test_csv_tag_only_in_validation_and_bad_columns(tmp_path):
    _images(tmp_path, 3)
    (tmp_path / "t.csv").write_text(
        "image,labels,split\nimg/0.jpg,a,train\nimg/1.jpg,b,train\nimg/2.jpg,zebra,val\n"
    )
    with pytest.raises(ValueError, match=r"\['zebra'\].*no training row"):
        load_dataset("csv", tmp_path / "t.csv", "val")
    (tmp_path / "t.csv").write_text("path,labels\nimg/0.jpg,a\n")
    with pytest.raises(ValueError, match=r"'image' column.*\['labels', 'path'\]"):
        load_dataset("csv", tmp_path / "t.csv", "train")


def test_jsonl_with_list_labels(tmp_path):
    _images(tmp_path, 3)
    lines = [
        {"image": "img/0.jpg", "labels": ["x", "y"], "split": "train"},
        {"image": "img/1.jpg", "labels": ["y"], "split": "train"},
        {"image": "img/2.jpg", "labels": "x;y", "split": "validation"},
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    train = load_dataset("jsonl", tmp_path / "t.jsonl", "train")
    val = load_dataset("jsonl", tmp_path / "t.jsonl", "val")
    assert train.task == "multi_label" and train.targets.tolist() == [[1, 1], [0, 1]]
    assert val.targets.tolist() == [[1, 1]]


@pytest.mark.parametrize("outside", ["../elsewhere/0.jpg", "img/../../elsewhere/0.jpg", "ABSOLUTE"])
def test_csv_paths_leaving_the_tables_folder_are_refused_unless_allowed(tmp_path, outside):
    table_dir = tmp_path / "tables"
    _images(table_dir, 2)
    write_jpeg(tmp_path / "elsewhere" / "0.jpg", 16, 16)
    outside = str(tmp_path / "elsewhere" / "0.jpg") if outside == "ABSOLUTE" else outside
    inside_absolute = table_dir / "img" / "1.jpg"  # absolute but inside: fine
    (table_dir / "t.csv").write_text(
        "image,labels,split\nimg/0.jpg,a,train\nimg/sub/../1.jpg,a,val\n"
        f"{inside_absolute},b,train\n{outside},b,train\n"
    )
    with pytest.raises(ValueError) as caught:
        load_dataset("csv", table_dir / "t.csv", "train")
    message = str(caught.value)
    assert f"Line 5 of {table_dir / 't.csv'} names image {outside!r}" in message
    assert "outside the table's folder" in message and "allow_outside_paths" in message
    with pytest.raises(ValueError, match="Line 5"):  # before any model is built
        describe_dataset("csv", table_dir / "t.csv")
    allowed = load_dataset("csv", table_dir / "t.csv", "train", allow_outside_paths=True)
    assert str((tmp_path / "elsewhere" / "0.jpg").resolve()) in allowed.paths
    info = describe_dataset("csv", table_dir / "t.csv", allow_outside_paths=True)
    assert info.classes == ("a", "b")


def test_jsonl_outside_path_names_its_line_and_the_datamodule_option_allows_it(tmp_path):
    from tresnet_ft.data import ImageDataModule

    _images(tmp_path / "data", 2)
    write_jpeg(tmp_path / "other.jpg", 16, 16)
    lines = ['{"image": "img/0.jpg", "labels": "a"}', "", '{"image": "../other.jpg", "labels": "b"}',
             '{"image": "img/1.jpg", "labels": "b"}']
    (tmp_path / "data" / "t.jsonl").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"Line 3 of .*t\.jsonl names image '\.\./other\.jpg'"):
        _ = ImageDataModule("jsonl", str(tmp_path / "data" / "t.jsonl"), image_size=32).info
    data = ImageDataModule("jsonl", str(tmp_path / "data" / "t.jsonl"), image_size=32,
                           dataset_options={"allow_outside_paths": True}, val_fraction=0.01)
    assert data.classes == ["a", "b"]
    data.setup("fit")
    listed = data.datasets["train"].dataset.paths + data.datasets["val"].dataset.paths
    assert str((tmp_path / "other.jpg").resolve()) in listed
