"""--data.dataset hf: Hugging Face datasets built with the `datasets` library itself, in each source
layout (save_to_disk, Parquet, Arrow, imagefolder + metadata.jsonl, the two local hub caches)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import datasets  # a test extra: a missing install must fail here, not skip
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402

from tests.run_helpers import column_by_step, error_line, metrics_rows, run_command  # noqa: E402
from tresnet_ft.cli.command import main  # noqa: E402
from tresnet_ft.data import ImageDataModule, describe_dataset, load_dataset  # noqa: E402
from tresnet_ft.errors import InvalidValueError, MissingPackageError  # noqa: E402

NOT_AN_IMAGE = b"<html>this is not an image</html>"
FEATURES = Features({"img": Image(), "fine_label": ClassLabel(names=["cat", "dog", "owl"]),
                     "coarse_label": ClassLabel(names=["mammal", "bird"])})


def png(seed: int, size: int = 24) -> tuple[bytes, np.ndarray]:
    """A small RGB PNG (lossless, so decoding gives these pixels back) and its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels[..., ::-1])[1].tobytes(), pixels


def split_rows(count: int, start: int, corrupt: int | None = None) -> dict[str, list]:
    images = [{"bytes": NOT_AN_IMAGE if i == corrupt else png(start + i)[0], "path": f"{start + i}.png"}
              for i in range(count)]
    fine = [(start + i) % 3 for i in range(count)]
    return {"img": images, "fine_label": fine, "coarse_label": [int(f == 2) for f in fine]}


def cifar_like(corrupt: int | None = None) -> DatasetDict:
    """train 12 rows (row ``corrupt`` holds bytes that are not an image), validation 6, test 6."""
    return DatasetDict({name: Dataset.from_dict(split_rows(count, start, corrupt if name == "train" else None),
                                                features=FEATURES)
                        for name, count, start in (("train", 12, 0), ("validation", 6, 100), ("test", 6, 200))})


def multi_label(tmp_path: Path) -> Path:
    tags = [[0], [1], [0, 2], [2], [1, 2], [0, 1, 2], [0], [1], [2], []] * 2
    features = Features({"image": Image(), "tags": Sequence(ClassLabel(names=["sky", "tree", "water"]))})
    rows = {"image": [{"bytes": png(i)[0], "path": None} for i in range(len(tags))], "tags": tags}
    folder = tmp_path / "multi"
    Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return folder


def hub_prepared_cache(tmp_path: Path, hub_id: str) -> Path:
    """The folder ``load_dataset(hub_id)`` fills on a connected machine,
    ``<cache>/<org>___<name>/<config>/<version>/<commit>/<name>-<split>.arrow`` + ``dataset_info.json``,
    written by the library's own Parquet builder; only the two folder names it cannot choose are
    renamed to the hub's (the namespace and the config)."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    parquet = tmp_path / "parquet"
    for name, split in cifar_like().items():
        split.to_parquet(str(parquet / f"{name}-00000-of-00001.parquet"))
    org, name = hub_id.split("/")
    cache = tmp_path / "datasets_cache"
    files = DataFilesDict.from_patterns({s: [str(parquet / f"{s}-00000-of-00001.parquet")]
                                        for s in ("train", "validation", "test")})
    builder = Parquet(dataset_name=name, hash="0123456789abcdef", data_files=files, cache_dir=str(cache))
    builder.download_and_prepare()
    config = Path(builder.cache_dir).parents[1]
    config.rename(config.parent / "default")
    (cache / name).rename(cache / f"{org}___{name}")
    return cache


def hub_snapshot_cache(tmp_path: Path, hub_id: str) -> Path:
    """The hub cache layout `hf download --repo-type dataset ID` fills: refs/main names the
    commit, snapshots/<commit>/ holds the repository's files (data/*.parquet here)."""
    cache = tmp_path / "hub"
    repo = cache / f"datasets--{hub_id.replace('/', '--')}"
    data = repo / "snapshots" / "c0ffee" / "data"
    for name, split in cifar_like().items():
        split.to_parquet(str(data / f"{name}-00000-of-00001.parquet"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    return cache


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and empty caches, in this process (the libraries read the variables once)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(tmp_path / "empty_datasets"))


def sources(tmp_path: Path) -> dict[str, tuple[str, dict]]:
    """The same data in every source layout: {kind: (root, dataset_options)}."""
    data = cifar_like()
    data.save_to_disk(str(tmp_path / "saved"))
    for name, split in data.items():
        split.to_parquet(str(tmp_path / "pq" / f"{name}-00000-of-00001.parquet"))
    arrow = tmp_path / "arrow"
    data["train"].save_to_disk(str(arrow))
    arrow_file = next(arrow.glob("*.arrow"))
    folder = tmp_path / "imagefolder"
    for name, split in data.items():
        (folder / name).mkdir(parents=True)
        cells = split.cast_column("img", Image(decode=False))  # the stored PNG bytes, not decoded
        lines = []
        for i, row in enumerate(cells):
            (folder / name / f"{i}.png").write_bytes(row["img"]["bytes"])
            lines.append(json.dumps({"file_name": f"{i}.png", "label": FEATURES["fine_label"].names[row["fine_label"]]}))
        (folder / name / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    cache = {"cache_dir": str(tmp_path / "convert")}
    fine = {"label_column": "fine_label", **cache}
    return {"save_to_disk": (str(tmp_path / "saved"), fine), "parquet": (str(tmp_path / "pq"), fine),
            "arrow": (str(arrow_file), fine), "imagefolder": (str(folder), cache),
            "hub": ("org/cifar-like", {"label_column": "fine_label",
                                       "cache_dir": str(hub_prepared_cache(tmp_path, "org/cifar-like"))})}


# -- columns, tasks, splits ----------------------------------------------------------------------

def test_each_source_gives_the_same_images_classes_and_splits(tmp_path, offline):
    for kind, (root, options) in sources(tmp_path).items():
        info = describe_dataset("hf", root, **options)
        assert info.task == "single_label" and info.classes == ("cat", "dog", "owl"), kind
        train = load_dataset("hf", root, "train", **options)
        image, label = train[1]
        assert np.array_equal(image, png(1)[1]) and label == 1, kind
        if kind == "arrow":  # one file, one split: validation is the holdout of train
            assert len(train) + len(load_dataset("hf", root, "val", **options)) == 12
            continue
        val, test = (load_dataset("hf", root, split, **options) for split in ("val", "test"))
        assert (len(train), len(val), len(test)) == (12, 6, 6), kind
        assert np.array_equal(test[0][0], png(200)[1]) and test[0][1] == 200 % 3, kind


def test_the_hub_cache_of_hf_download_is_found_offline(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_snapshot_cache(tmp_path, "org/snap")))
    options = {"label_column": "fine_label", "cache_dir": str(tmp_path / "convert")}
    val = load_dataset("hf", "org/snap", "val", **options)
    assert len(val) == 6 and np.array_equal(val[0][0], png(100)[1])


def test_several_label_columns_need_a_name_and_an_unknown_one_lists_them(tmp_path):
    cifar_like().save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(InvalidValueError, match="found several: \\['fine_label', 'coarse_label'\\]"):
        describe_dataset("hf", tmp_path / "saved")
    with pytest.raises(InvalidValueError, match="img \\(Image\\), fine_label \\(ClassLabel\\), coarse_label"):
        describe_dataset("hf", tmp_path / "saved", label_column="fine")
    coarse = describe_dataset("hf", tmp_path / "saved", label_column="coarse_label")
    assert coarse.classes == ("mammal", "bird")
    with pytest.raises(InvalidValueError, match="Expected image_column 'fine_label'.*holds ClassLabel"):
        describe_dataset("hf", tmp_path / "saved", image_column="fine_label", label_column="coarse_label")


def test_a_sequence_of_class_labels_is_multi_label_with_multi_hot_targets(tmp_path):
    folder = multi_label(tmp_path)
    info = describe_dataset("hf", folder)
    assert info.task == "multi_label" and info.classes == ("sky", "tree", "water")
    train, val = (load_dataset("hf", folder, split, val_fraction=0.3) for split in ("train", "val"))
    assert len(train) + len(val) == 20 and len(val) >= 3
    rows = np.concatenate([train.rows, val.rows])
    assert sorted(rows.tolist()) == list(range(20))  # the holdout partitions the rows
    targets = np.concatenate([train.targets, val.targets])
    assert targets.dtype == np.float32 and targets.shape == (20, 3)
    by_row = dict(zip(rows.tolist(), targets.tolist()))
    assert by_row[5] == [1.0, 1.0, 1.0] and by_row[2] == [1.0, 0.0, 1.0] and by_row[9] == [0.0, 0.0, 0.0]
    owner = train if 5 in train.rows else val
    image, target = owner[int(np.flatnonzero(owner.rows == 5)[0])]
    assert target.tolist() == [1.0, 1.0, 1.0] and np.array_equal(image, png(5)[1])


def test_string_labels_are_sorted_classes_and_the_holdout_is_deterministic(tmp_path):
    rows = {"image": [{"bytes": png(i)[0], "path": None} for i in range(20)],
            "label": ["zebra", "ant", "mole", "ant"] * 5}
    Dataset.from_dict(rows, features=Features({"image": Image(), "label": Value("string")})).to_parquet(
        str(tmp_path / "animals.parquet"))
    info = describe_dataset("hf", tmp_path / "animals.parquet", cache_dir=str(tmp_path / "c"))
    assert info.classes == ("ant", "mole", "zebra")
    first, again = (load_dataset("hf", tmp_path / "animals.parquet", "val", seed=3, cache_dir=str(tmp_path / "c"))
                    for _ in range(2))
    assert first.rows.tolist() == again.rows.tolist()
    lists = {"image": rows["image"], "tags": [["a", "b"], ["b"], [], ["c"]] * 5}
    Dataset.from_dict(lists).to_parquet(str(tmp_path / "tags.parquet"))
    tags = describe_dataset("hf", tmp_path / "tags.parquet", image_column="image", cache_dir=str(tmp_path / "c"))
    assert tags.task == "multi_label" and tags.classes == ("a", "b", "c")


# -- decoding, workers, reports ------------------------------------------------------------------

def test_a_corrupt_image_is_skipped_and_reported_once_and_workers_get_no_table_copy(tmp_path, caplog):
    cifar_like(corrupt=4).save_to_disk(str(tmp_path / "saved"))
    module = ImageDataModule("hf", str(tmp_path / "saved"), image_size=32, batch_size=4, num_workers=1,
                             dataset_options={"label_column": "fine_label"}, persistent_workers=False)
    module.setup("fit")
    train = module.datasets["train"].dataset
    table_bytes = train.table_dataset.data.table.nbytes
    train[0]  # the image column is now looked up in this process: it must still not travel
    assert len(pickle.dumps(train)) < table_bytes / 4  # the Arrow file's path, not its rows
    seen = sum(len(targets) for _, targets in module.train_dataloader())
    assert seen == 12  # drop_last on 12 rows at batch 4: every item served, the bad one by a substitute
    with caplog.at_level(logging.WARNING):
        module.teardown("fit")
    reports = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(reports) == 1 and "Skipped 1 unreadable image" in reports[0]
    assert "[train] row 4 (not an image (unknown file header))" in reports[0]


def test_a_stored_path_outside_the_dataset_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png(0)[0])
    rows = {"img": [{"bytes": None, "path": str(outside)}, {"bytes": png(1)[0], "path": None}] * 2,
            "label": ["a", "b"] * 2}
    table = tmp_path / "data" / "table.parquet"  # to_parquet keeps a path as written (save_to_disk embeds it)
    Dataset.from_dict(rows, features=Features({"img": Image(), "label": Value("string")})).to_parquet(str(table))
    with pytest.raises(InvalidValueError, match="stores only the image path .*elsewhere.png.*allow_outside_paths"):
        load_dataset("hf", table, "train", cache_dir=str(tmp_path / "c"))
    trusted = load_dataset("hf", table, "train", allow_outside_paths=True, cache_dir=str(tmp_path / "c"))
    assert any(np.array_equal(trusted[i][0], png(0)[1]) for i in range(len(trusted)))


def test_the_cifar100_recipes_hub_arguments_train_on_fine_labels_and_validate_on_test(tmp_path, offline):
    from tresnet_ft.cli.recipe import load_recipe

    recipe = load_recipe("cifar100")  # uoft-cs/cifar100 has the columns of cifar_like: img, fine_label, coarse_label
    cache = hub_prepared_cache(tmp_path, recipe.hub["root"])
    data = {**recipe.config["data"], "dataset": "hf", "root": recipe.hub["root"],
            "dataset_options": {**recipe.hub["dataset_options"], "cache_dir": str(cache)}}
    module = ImageDataModule(**data)
    assert module.classes == ["cat", "dog", "owl"] and module.task == "single_label"
    module.setup("fit")
    val = module.datasets["val"].dataset
    assert len(val) == 6 and np.array_equal(val[0][0], png(200)[1])  # val_split: test


# -- errors on the command line ------------------------------------------------------------------

def test_a_hub_id_in_no_cache_offline_is_one_line_saying_what_to_run(caplog, offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = error_line(caplog, ["fit", "--data.dataset", "hf", "--data.root", "someone/not-cached",
                                  "--model.pretrained", "null"])
    assert "'someone/not-cached' is not in the datasets cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download --repo-type dataset someone/not-cached" in message and "HF_HOME" in message
    assert "\n" not in message.split("1. ", 1)[1].split("Fix:")[0].strip()


def test_without_the_datasets_package_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingPackageError, match='pip install "tresnet-ft\\[datasets\\]"'):
        describe_dataset("hf", tmp_path)


# -- a real fit on every source ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["save_to_disk", "parquet", "arrow", "imagefolder", "hub"])
def test_fast_dev_run_fit_through_the_cli(kind, tmp_path, offline, monkeypatch, caplog):
    root, options = sources(tmp_path)[kind]
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("base: _base\nmodel: {pretrained: null, freeze_epochs: 0}\n"
                      "data: {image_size: 64, batch_size: 2, num_workers: 0, randaugment_ops: 0, cutout: 0.0}\n")
    args = ["fit", "--recipe", str(recipe), "--data.dataset", "hf", "--data.root", root,
            "--data.dataset_options", json.dumps(options), "--trainer.fast_dev_run", "true",
            "--logger", "csv", "--model.plots", "false"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert os.path.isdir(tmp_path / "runs")


@pytest.mark.slow
def test_two_ddp_processes_with_loader_workers_train_on_parquet(tmp_path):
    """Lightning's DDP launches a second process that rebuilds the dataset; each process's loader
    worker gets it pickled (the Arrow file's path, not its rows); the unreadable row is skipped."""
    for name, split in cifar_like(corrupt=3).items():
        split.to_parquet(str(tmp_path / "pq" / f"{name}-00000-of-00001.parquet"))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("base: _base\nmodel: {pretrained: null, freeze_epochs: 0}\n"
                      "data: {image_size: 32, batch_size: 2, num_workers: 1, randaugment_ops: 0, cutout: 0.0}\n")
    options = {"label_column": "fine_label", "cache_dir": str(tmp_path / "convert")}
    proc = run_command(["fit", "--recipe", str(recipe), "--data.dataset", "hf", "--data.root", str(tmp_path / "pq"),
                        "--data.dataset_options", json.dumps(options), "--trainer.strategy", "ddp",
                        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_epochs", "1",
                        "--logger", "csv", "--model.plots", "false", "--trainer.enable_progress_bar", "false"],
                       cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    rows = metrics_rows(run)
    # 12 training rows split between the 2 processes (6 each), batches of 2: 3 steps, then validation
    assert list(column_by_step(rows, "val/top1")) == [2]
    assert 0.0 <= column_by_step(rows, "val/top1")[2] <= 1.0 and (run / "checkpoints" / "last.ckpt").is_file()
    assert "Skipped 1 unreadable image(s)" in proc.stderr and "[train] row 3 (not an image" in proc.stderr
