"""One reader per input kind: folders, CSV/JSONL tables and ``version_<N>`` run folders are read
by the same code for training and for prediction, so both see the same images and rows."""
from __future__ import annotations

import json

import pytest

from tests.data_builders import write_jpeg
from tresnet_ft.data import load_dataset
from tresnet_ft.data.files import image_files, is_hidden, visible_subfolders
from tresnet_ft.data.tabular import read_rows
from tresnet_ft.inference.inputs import list_image_paths
from tresnet_ft.training.runs import find_checkpoint, next_version, run_versions

# -- folders -------------------------------------------------------------------------------------

# Under root/train/: what both training and prediction must list, and what both must skip.
SEEN = ["cat/1.jpg", "cat/2.PNG", "cat/trip/3.JPEG", "cat/__4.jpg", "dog/5.webp.png", "dog/deep/er/6.bmp"]
SKIPPED_IMAGES = ["cat/.7.jpg", "cat/._8.jpg", "cat/.cache/9.jpg", "dog/.git/objects/10.png",
                  ".thumbs/11.jpg", "__MACOSX/cat/12.jpg"]  # hidden files and folders, hidden "classes"
SKIPPED_OTHER = {"cat/notes.txt": "not an image", "cat/.DS_Store": "junk", "dog/labels.csv": "a,b",
                 "dog/raw.cr2": "raw", "README": "hi"}


def _messy_folder(root):
    for name in SEEN + SKIPPED_IMAGES:
        write_jpeg(root / "train" / name, 16, 16, seed=len(name))
    for name, text in SKIPPED_OTHER.items():
        (root / "train" / name).write_text(text)
    write_jpeg(root / "val" / "cat" / "v.jpg", 16, 16)
    write_jpeg(root / "val" / "dog" / "w.jpg", 16, 16)


def test_training_and_prediction_see_the_same_images_in_a_folder_with_hidden_and_other_files(tmp_path):
    _messy_folder(tmp_path)
    train = load_dataset("folder", tmp_path, "train")
    predicted = list_image_paths([tmp_path / "train"])
    expected = sorted(str(tmp_path / "train" / name) for name in SEEN)
    assert train.classes == ["cat", "dog"]  # neither .thumbs nor macOS's __MACOSX is a class
    assert sorted(train.paths) == expected
    assert predicted == expected  # sorted by path, each once
    assert train.targets.tolist() == [0, 0, 0, 0, 1, 1]


def test_the_walker_skips_hidden_names_at_every_level_but_reads_a_hidden_root(tmp_path):
    root = tmp_path / ".photos"  # the folder given is read whatever its name
    for name in ["a.jpg", "sub/b.tif", ".sub/c.jpg", "sub/.d.jpg", "sub/.e/f.jpg", "sub/g.gif"]:
        write_jpeg(root / name, 8, 8)
    assert image_files(root) == [str(root / "a.jpg"), str(root / "sub/b.tif"), str(root / "sub/g.gif")]
    assert [p.name for p in visible_subfolders(root)] == ["sub"]
    assert is_hidden(".x") and is_hidden("__MACOSX") and not is_hidden("__x.jpg") and not is_hidden("x.")


# -- tables --------------------------------------------------------------------------------------


def _table_images(folder, count):
    for i in range(count):
        write_jpeg(folder / "img" / f"{i}.jpg", 16, 16, seed=i)


def test_a_table_lists_the_same_images_for_training_and_prediction(tmp_path):
    _table_images(tmp_path, 4)
    (tmp_path / "t.csv").write_text('image,labels,split\nimg/0.jpg,a,train\n" img/1.jpg ",b,train\n'
                                    f"{tmp_path / 'img' / '2.jpg'},a,train\nimg/sub/../3.jpg,b,train\n")
    lines = [{"image": f"img/{i}.jpg", "labels": "ab"[i % 2], "split": "train"} for i in range(4)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    expected = [str((tmp_path / "img" / f"{i}.jpg").resolve()) for i in range(4)]
    for table in ("t.csv", "t.jsonl"):
        train = load_dataset(table.split(".")[1], tmp_path / table, "train")
        assert train.paths == expected
        assert list_image_paths([tmp_path / table]) == expected


def test_every_jsonl_line_is_checked_not_only_the_first(tmp_path):
    _table_images(tmp_path, 3)
    table = tmp_path / "t.jsonl"
    table.write_text('{"image": "img/0.jpg", "labels": "a"}\n\n{"image": "img/1.jpg"}\n')
    # Training needs labels on every row; the line without them is named (it used to be a KeyError).
    with pytest.raises(ValueError, match=r"Expected a 'labels' column in .*t\.jsonl on line 3, but got "
                                         r"columns \['image'\]. Fix: name the columns 'image' "):
        load_dataset("jsonl", table, "train")
    assert len(list_image_paths([table])) == 2  # prediction needs only the image column
    table.write_text('{"image": "img/0.jpg", "labels": "a"}\n["img/1.jpg", "b"]\n')
    for read in (lambda: load_dataset("jsonl", table, "train"), lambda: list_image_paths([table])):
        with pytest.raises(ValueError, match=r"one JSON object per line in .*t\.jsonl, but line 2 is a list"):
            read()


def test_an_empty_image_cell_names_its_line_for_training_and_prediction(tmp_path):
    _table_images(tmp_path, 2)
    table = tmp_path / "t.csv"
    # The quoted cell spans two lines: the empty cell's row ends on line 4 of the file.
    table.write_text('image,labels\nimg/0.jpg,"a\nb"\n,a\nimg/1.jpg,b\n')
    for read in (lambda: load_dataset("csv", table, "train"), lambda: list_image_paths([table])):
        with pytest.raises(ValueError, match=r"Expected an image path in the 'image' column on line 4 of "
                                             r".*t\.csv, but got ''"):
            read()


def test_read_rows_keeps_the_cells_and_the_line_each_row_ends_on(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text('\ufeffimage,labels\na.jpg,"x\ny"\nb.jpg,z\n', encoding="utf-8")  # with a BOM
    rows = read_rows(table, ("image", "labels"))
    assert rows.lines == [3, 4] and [row["labels"] for row in rows.rows] == ["x\ny", "z"]
    assert rows.image_paths() == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    (tmp_path / "empty.csv").write_text("")
    assert read_rows(tmp_path / "empty.csv", ("image", "labels")).rows == []  # no header: no rows


# -- run folders ---------------------------------------------------------------------------------


def test_version_folders_are_parsed_in_one_place(tmp_path):
    runs = tmp_path / "runs"
    for name in ["version_0", "version_2", "version_10", "version_x", "version_1.bak", "version_٣", "other"]:
        (runs / "quickstart" / name).mkdir(parents=True)
    (runs / "quickstart" / "version_11").write_text("a file still takes the name")
    assert [version for version, _ in run_versions(runs, "quickstart")] == [0, 2, 10, 11]
    assert next_version(runs, "quickstart") == 12
    assert next_version(runs, "never_run") == 0
    # last: the newest run that has one (version_10 has none; version_11 is a file).
    for version in (0, 2):
        (runs / "quickstart" / f"version_{version}" / "checkpoints").mkdir()
        (runs / "quickstart" / f"version_{version}" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    newest = runs / "quickstart" / "version_2" / "checkpoints" / "last.ckpt"
    assert find_checkpoint(runs, "quickstart", "last") == newest
