"""CSV / JSONL tables are read strictly or not at all: stray quotes, extra cells and other encodings
are errors naming the file and the line; label values are typed; a table that turns multi-label on a
hunch says so; the holdout of a small table is never empty."""

from __future__ import annotations

import json
import logging

import pytest

from tests.data_builders import write_jpeg
from tresnet_ft.data import ImageDataModule, describe_dataset, load_dataset
from tresnet_ft.errors import UserError
from tresnet_ft.inference.inputs import list_image_paths


def _images(folder, count):
    for i in range(count):
        write_jpeg(folder / "img" / f"{i}.jpg", 16, 16, seed=i)


def _both_readers(table):
    """Training and prediction read a table with the same reader: both must refuse it."""
    return (lambda: load_dataset(table.suffix[1:], table, "train"), lambda: list_image_paths([table]))


# -- quotes, cells, encodings -----------------------------------------------------------------


def test_a_stray_quote_names_its_line_instead_of_swallowing_the_rows_after_it(tmp_path):
    _images(tmp_path, 4)
    table = tmp_path / "t.csv"
    table.write_text('image,labels\nimg/0.jpg,a\nimg/1.jpg,"b\nimg/2.jpg,a\nimg/3.jpg,b\n')
    for read in _both_readers(table):
        with pytest.raises(UserError, match=r"Line 3 of .*t\.csv opens a quoted cell that never closes.*"
                                            r"line 3: 'img/1\.jpg,\"b'.*Fix: remove the stray"):
            read()
    # Closed again by a second stray quote: the lines in between would have been one cell.
    table.write_text('image,labels\nimg/0.jpg,"a\nimg/1.jpg,b\nimg/2.jpg,a"\nimg/3.jpg,b\n')
    with pytest.raises(UserError, match=r"Line 2 of .*t\.csv opens a quoted cell that closes only on "
                                        r"line 4, so lines 2-4 were read as one row"):
        load_dataset("csv", table, "train")
    # A single-column table (prediction) has no comma to give it away: an image path never spans lines.
    table.write_text('image\n"img/0.jpg\nimg/1.jpg\nimg/2.jpg"\n')
    with pytest.raises(UserError, match=r"Line 2 of .*t\.csv opens a quoted cell that closes only on line 4"):
        list_image_paths([table])


def test_a_stray_quote_in_a_large_table_is_the_same_message_not_a_csv_traceback(tmp_path):
    _images(tmp_path, 2)
    table = tmp_path / "t.csv"
    padding = "x" * 80
    rows = [f"img/{i % 2}.jpg,{padding}{i}" for i in range(3000)]  # ~260 KB after the quote
    rows[7] = 'img/1.jpg,"open'
    table.write_text("image,labels\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"Line 9 of .*t\.csv opens a quoted cell that does not close "
                                        r"before line \d+, where it passes csv's limit of 131,072"):
        load_dataset("csv", table, "train")


def test_cells_past_the_header_and_text_after_a_quote_are_errors_not_dropped(tmp_path):
    _images(tmp_path, 3)
    table = tmp_path / "t.csv"
    table.write_text("image,labels\nimg/0.jpg,a,\nimg/1.jpg,b\nimg/2.jpg,a,b\n")  # an empty extra cell is fine
    for read in _both_readers(table):
        with pytest.raises(UserError, match=r"Line 4 of .*t\.csv has 3 cells but the header names 2 columns"
                                            r".*Fix: quote a cell that holds a comma"):
            read()
    table.write_text('image,labels\nimg/0.jpg,a\nimg/1.jpg,"b"c\n')
    with pytest.raises(UserError, match=r"well-formed CSV in .*t\.csv, but line 3 is not"):
        load_dataset("csv", table, "train")
    table.write_text("image,labels,split\nimg/0.jpg\nimg/1.jpg,b,train\n")  # no labels cell at all
    with pytest.raises(UserError, match=r"Line 2 of .*t\.csv has 1 cell\(s\), so it has no 'labels' cell"):
        load_dataset("csv", table, "train")
    assert len(list_image_paths([table])) == 2  # prediction needs only the image cell


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_latin1_table_names_the_file_the_byte_and_the_fix(tmp_path, suffix):
    _images(tmp_path, 2)
    table = tmp_path / f"t{suffix}"
    if suffix == ".csv":
        text = "image,labels\nimg/0.jpg,a\nimg/1.jpg,caf\u00e9\n"
    else:
        text = '{"image": "img/0.jpg", "labels": "a"}\n{"image": "img/1.jpg", "labels": "caf\u00e9"}\n'
    table.write_bytes(text.encode("latin-1"))
    offset = text.index("\u00e9")  # one byte per character in Latin-1
    line = text[:offset].count("\n") + 1
    for read in _both_readers(table):
        with pytest.raises(UserError) as caught:
            read()
        assert f"Expected {table} to be UTF-8 text, but byte {offset} (0xe9, on line {line})" in str(caught.value)
        assert "Fix: save it as UTF-8" in str(caught.value)


# -- labels ----------------------------------------------------------------------------------


def test_integer_labels_are_class_names_in_jsonl_and_csv_alike(tmp_path):
    _images(tmp_path, 6)
    labels = [0, 1, 2, 0, 1, 2]
    lines = [{"image": f"img/{i}.jpg", "labels": label, "split": "train"} for i, label in enumerate(labels)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    rows = "".join(f"img/{i}.jpg,{label},train\n" for i, label in enumerate(labels))
    (tmp_path / "t.csv").write_text("image,labels,split\n" + rows)
    for kind in ("jsonl", "csv"):
        train = load_dataset(kind, tmp_path / f"t.{kind}", "train")
        assert train.task == "single_label" and train.classes == ["0", "1", "2"]
        assert train.targets.tolist() == labels  # class 0 is a class, not "no tag"
    # Integer labels are class ids: 0..11 give outputs 0..11 ("10" after "9", not after "1").
    ids = list(range(12)) * 2
    many = [{"image": f"img/{i % 6}.jpg", "labels": label, "split": "train"} for i, label in enumerate(ids)]
    (tmp_path / "ids.jsonl").write_text("\n".join(json.dumps(line) for line in many))
    by_id = load_dataset("jsonl", tmp_path / "ids.jsonl", "train")
    assert by_id.classes == [str(k) for k in range(12)] and by_id.targets.tolist() == ids
    lines[2]["labels"] = [0, "cat"]  # a list may mix names and integers
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    train = load_dataset("jsonl", tmp_path / "t.jsonl", "train")
    assert train.task == "multi_label" and train.classes == ["0", "1", "2", "cat"]


@pytest.mark.parametrize("value", [{"name": "cat"}, [["cat"]], 1.5, True, [None]])
def test_a_label_that_is_not_a_tag_names_its_line(tmp_path, value):
    _images(tmp_path, 3)
    lines = [{"image": "img/0.jpg", "labels": "a"}, {"image": "img/1.jpg", "labels": "b"},
             {"image": "img/2.jpg", "labels": value}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(UserError, match=r"Expected the 'labels' value on line 3 of .*t\.jsonl to be a tag "
                                        r"name, an integer class or a list of them"):
        load_dataset("jsonl", tmp_path / "t.jsonl", "train")


def test_a_table_that_turns_multi_label_on_a_hunch_warns_with_the_lines(tmp_path, caplog):
    _images(tmp_path, 6)
    cells = ["cat", "dog", "", "cat", "golden retriever", "dog"]  # a hole and a name with a space
    rows = "".join(f"img/{i}.jpg,{cell},train\n" for i, cell in enumerate(cells))
    (tmp_path / "t.csv").write_text("image,labels,split\n" + rows)
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.data"):
        train = load_dataset("csv", tmp_path / "t.csv", "train")
        load_dataset("csv", tmp_path / "t.csv", "train")
    assert train.task == "multi_label"
    warnings = [r.getMessage() for r in caplog.records if "read as multi-label" in r.getMessage()]
    assert len(warnings) == 1 and "lines [4, 6]" in warnings[0] and "multi_label: false" in warnings[0]
    # Told it is single-label, a class name keeps its space and the hole is an error with its line.
    with pytest.raises(UserError, match=r"exactly one tag per row .* but lines \[4\] of .*t\.csv"):
        load_dataset("csv", tmp_path / "t.csv", "train", multi_label=False)
    cells[2] = "dog"
    rows = "".join(f"img/{i}.jpg,{cell},train\n" for i, cell in enumerate(cells))
    (tmp_path / "t.csv").write_text("image,labels,split\n" + rows)
    single = load_dataset("csv", tmp_path / "t.csv", "train", multi_label=False)
    assert single.task == "single_label" and single.classes == ["cat", "dog", "golden retriever"]
    # Tags listed with ';' are multi-label on purpose: an empty cell there is a negative, not a hunch.
    caplog.clear()
    (tmp_path / "t.csv").write_text("image,labels,split\n" + rows.replace("golden retriever", "cat;dog")
                                    .replace("img/2.jpg,dog", "img/2.jpg,"))
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.data"):
        assert load_dataset("csv", tmp_path / "t.csv", "train").task == "multi_label"
    assert not [r for r in caplog.records if "read as multi-label" in r.getMessage()]


def test_a_single_class_table_is_refused_naming_the_table(tmp_path):
    _images(tmp_path, 3)
    (tmp_path / "t.csv").write_text("image,labels\nimg/0.jpg,cat\nimg/1.jpg,cat\nimg/2.jpg,cat\n")
    for describe_or_load in (lambda: describe_dataset("csv", tmp_path / "t.csv"),
                             lambda: load_dataset("csv", tmp_path / "t.csv", "train")):
        with pytest.raises(UserError, match=r"at least 2 classes in the training rows of .*t\.csv .* every "
                                            r"one has 'cat'"):
            describe_or_load()


def test_many_tags_seen_only_in_validation_are_cut_to_a_short_line(tmp_path):
    _images(tmp_path, 3)
    rows = "img/0.jpg,a,train\nimg/1.jpg,b,train\n"
    rows += "img/2.jpg,{},val\n".format(";".join(f"tag{k:03d}" for k in range(300)))
    (tmp_path / "t.csv").write_text("image,labels,split\n" + rows)
    with pytest.raises(UserError) as caught:
        load_dataset("csv", tmp_path / "t.csv", "val")
    message = str(caught.value)
    assert "['tag000', 'tag001'," in message and "'tag009', ...] and 290 more appear in the val rows" in message
    assert len(message) < 400


# -- holdout ---------------------------------------------------------------------------------


def test_a_small_multi_label_table_without_a_split_column_has_a_validation_row(tmp_path):
    _images(tmp_path, 10)
    # Coin flips at 10 % per row would draw none of these five rows for validation.
    cells = {0: "cat;dog", 1: "cat", 2: "dog", 5: "cat;bird", 6: "bird;dog"}
    (tmp_path / "t.csv").write_text("image,labels\n" + "".join(f"img/{i}.jpg,{c}\n" for i, c in cells.items()))
    data = ImageDataModule("csv", str(tmp_path / "t.csv"), image_size=32, num_workers=0)
    data.setup("fit")
    train, val = data.datasets["train"].dataset, data.datasets["val"].dataset
    assert len(val) >= 1 and len(train) + len(val) == 5 and not set(train.paths) & set(val.paths)
    assert train.targets.sum(axis=0).min() >= 1  # every tag keeps a training row
    one = tmp_path / "one"
    _images(one, 1)
    (one / "t.csv").write_text("image,labels\nimg/0.jpg,cat;dog\n")
    with pytest.raises(UserError, match=r"at least 2 images in .*one/t\.csv to hold out a validation split"):
        load_dataset("csv", one / "t.csv", "val")
