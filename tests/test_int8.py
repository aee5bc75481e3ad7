"""export --int8: static int8 quantisation, calibrated on the checkpoint's dataset, behind an accuracy gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.classifier_builders import (
    CLASSES,
    distinct_images,
    reference_logits,
    single_label_checkpoint,
    write_image,
)
from tests.run_helpers import error_line
from tresnet_ft.cli.command import main
from tresnet_ft.errors import InvalidValueError, MissingInputError
from tresnet_ft.inference.accuracy import DATAMODULE_KEY, DatasetSource, mean_average_precision
from tresnet_ft.inference.onnx_runtime import OnnxRuntime
from tresnet_ft.inference.quantize import AccuracyGateError, quantize_model
from tresnet_ft.inference.sidecar import sidecar_path
from tresnet_ft.training.metrics import average_precision_per_class, mean_over_classes_with_positives


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """``(checkpoint, folder, val truth)``: the single-label checkpoint saved as ``tresnet-ft fit`` saves
    it (with the DataModule's settings), and a class-folder dataset of images labelled by the fp32
    model's own top-1, so that the fp32 top-1 is 100 % and any int8 error is a real drop."""
    root = tmp_path_factory.mktemp("int8")
    folder, checkpoint = root / "shapes", root / "fit.ckpt"
    images = distinct_images(60, seed=7) + distinct_images(60, height=64, width=40, seed=8)
    labels = reference_logits(single_label_checkpoint(), images).argmax(dim=1).tolist()
    assert set(labels) == set(range(len(CLASSES))), "every class needs a training image"
    truth = []
    for index, (image, label) in enumerate(zip(images, labels)):
        split = "val" if index % 2 else "train"
        write_image(folder / split / CLASSES[label] / f"{index:03d}.png", image)
        truth += [label] if split == "val" else []
    state = torch.load(single_label_checkpoint(), weights_only=True)
    # What Lightning saves for ImageDataModule(dataset="folder", root=...): the path is only a hint.
    state[DATAMODULE_KEY] = {"dataset": "folder", "root": str(folder), "dataset_options": {"seed": 3},
                             "val_fraction": None, "seed": 0, "image_size": 64}
    torch.save(state, checkpoint)
    return checkpoint, folder, truth


@pytest.mark.slow
def test_int8_export_writes_the_model_and_records_the_quantisation(labelled, tmp_path):
    checkpoint, folder, truth = labelled
    output = tmp_path / "model_int8.onnx"
    # through the command, as users run it
    assert main(["export", str(checkpoint), "--format", "onnx", "--int8", "--calibration", "16", "--max-drop",
                 "100", "--data-root", str(folder), "-o", str(output)]) == 0
    record = json.loads(sidecar_path(output).read_text())["quantization"]
    assert record["fp32"] == pytest.approx(100.0)  # labelled by the fp32 model
    assert record["drop"] == pytest.approx(record["fp32"] - record["int8"], abs=1e-3)
    assert record["validation_images"] == len(truth) and record["calibration_images"] == 16
    assert "train split of folder" in record["calibration_source"] and "QDQ" in record["method"]
    # The file is a real int8 model: QDQ nodes, about a quarter of the fp32 weights' bytes.
    import onnx

    graph = onnx.load(str(output)).graph
    assert sum(node.op_type == "DequantizeLinear" for node in graph.node) > 50
    assert output.stat().st_size < 0.4 * checkpoint.stat().st_size
    # Its own top-1 on the validation images, computed here, is the one recorded.
    runtime = OnnxRuntime(output)
    images = [folder / "val" / CLASSES[label] for label in sorted(set(truth))]
    paths = sorted(path for class_folder in images for path in class_folder.iterdir())
    from tresnet_ft.data import read_image

    batch = torch.stack([runtime.info.eval_transform(output="uint8")(read_image(p)) for p in paths])
    predicted = runtime.logits(batch).argmax(dim=1)
    expected = torch.tensor([CLASSES.index(path.parent.name) for path in paths])
    assert 100.0 * float((predicted == expected).float().mean()) == pytest.approx(record["int8"], abs=1e-3)


@pytest.mark.slow
def test_the_gate_refuses_a_real_drop_and_keeps_the_previous_file(labelled, tmp_path, caplog):
    checkpoint, folder, _ = labelled
    black = tmp_path / "black"  # ranges measured on black images clip every real activation
    for index in range(4):
        write_image(black / f"{index}.png", np.zeros((64, 64, 3), dtype=np.uint8))
    output = tmp_path / "model_int8.onnx"
    output.write_bytes(b"previous")
    with pytest.raises(AccuracyGateError) as refused:
        quantize_model(checkpoint, output, calibration=black, max_drop=1.0, data_root=folder, num_workers=0)
    message = str(refused.value)
    assert "against the fp32 model's 100.00" in message and "more than --max-drop 1" in message
    assert "Fix:" in message and "was not written" in message
    assert output.read_bytes() == b"previous" and not sidecar_path(output).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["black", "model_int8.onnx"]  # no partial files


def test_bad_options_are_one_line(labelled, tmp_path, caplog):
    checkpoint, folder, _ = labelled
    out = str(tmp_path / "m.onnx")
    base = ["export", str(checkpoint), "--int8", "-o", out, "--data-root", str(folder)]
    assert "at least 1 image" in error_line(caplog, [*base, "--calibration", "0"])
    assert "is not there" in error_line(caplog, [*base, "--calibration", str(tmp_path / "nowhere")])
    assert "from 0 to 100" in error_line(caplog, [*base, "--max-drop", "-1"])
    assert "--format onnx --int8" in error_line(caplog, [*base, "--format", "torchscript"])
    assert not Path(out).exists()


def test_the_dataset_comes_from_the_checkpoint_and_the_location_from_the_user(labelled, tmp_path):
    checkpoint, folder, _ = labelled
    with pytest.raises(InvalidValueError, match=f"trained on '{folder}'.*Fix: --data-root PATH"):
        quantize_model(checkpoint, tmp_path / "m.onnx")  # the saved root is named, never read
    with pytest.raises(InvalidValueError, match="does not say which dataset it was trained on"):
        quantize_model(single_label_checkpoint(), tmp_path / "m.onnx")  # write_classifier saves no DataModule
    with pytest.raises(MissingInputError):
        quantize_model(checkpoint, tmp_path / "m.onnx", dataset=DatasetSource("folder", str(tmp_path / "gone")))


def test_mean_average_precision_matches_the_training_metric():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 4), generator=generator).float()  # many ties
    targets = (torch.rand(50, 4, generator=generator) > 0.6).long()
    targets[:, 3] = 0  # a class without positives is left out
    expected = mean_over_classes_with_positives(average_precision_per_class(scores, targets))
    assert float(mean_average_precision(scores, targets)) == pytest.approx(float(expected), abs=1e-6)
