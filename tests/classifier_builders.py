"""Builders for the predict and export tests: trained-looking checkpoints and a folder of photos.

A random-init TResNet starts every residual branch at zero and has identity norm statistics, so
its outputs barely depend on the image and folding its norms changes nothing. :func:`filled_model`
gives every norm seeded statistics and affine parameters instead (so folding is real work), and
scales the head's output weights; the head's bias is then shifted so that, over the test photos,
each class's logit is centred at zero: predictions differ from photo to photo, and sigmoid scores
fall on both sides of 0.5.

Checkpoints take seconds to build and ~120 MB each, so each kind is built once per test session
(in a temporary folder removed at exit) and shared by the predict and export tests. The model
that was written is kept in memory as the reference predictions and exports must match.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from tresnet_ft import create_model
from tresnet_ft.classifier.checkpoint import ClassifierInfo, LoadedClassifier, write_classifier
from tresnet_ft.data import EvalPreprocessing, read_image
from tresnet_ft.models.norm_act import BatchNormAct2d

IMAGE_SIZE = 64
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
TAGS = ["sky", "tree", "water", "road"]
ML_DECODER_ARGS = {"embed_dim": 32, "num_heads": 4, "ffn_dim": 64}
# Lossless formats for the photos the thresholds are tuned on, so files decode to the same pixels.
PHOTO_NAMES = ["a_flat.png", "b_ramp.bmp", "c_noise.png", "nested/d_ramp.png", "nested/deeper/e_flat.png",
               "f_upper.PNG"]


# How much to scale the head's output weights so the classes spread apart over the test photos
# (ML-Decoder's LayerNorms leave its logits far less image-dependent than a linear head's).
LOGIT_SCALE = {"linear": 5.0, "ml_decoder": 30.0}


def filled_model(num_classes: int, head: str = "linear",
                 head_args: dict[str, Any] | None = None) -> torch.nn.Module:
    """``tresnet_m`` with seeded weights, norm statistics and norm affine parameters, in eval mode."""
    torch.manual_seed(0)
    model = create_model("tresnet_m", num_classes, head=head, head_args=head_args)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in (module for module in model.modules() if isinstance(module, BatchNormAct2d)):
            z = torch.randn(4, norm.num_features, generator=generator)
            norm.weight.copy_(1 + 0.1 * z[0])
            norm.bias.copy_(0.1 * z[1])
            norm.running_mean.copy_(0.1 * z[2])
            norm.running_var.copy_(1 + 0.1 * z[3].abs())
        weight = model.head.fc.weight if head == "linear" else model.head.group_fc_weight
        weight.mul_(LOGIT_SCALE[head])
    return model.eval()


def distinct_images(count: int, height: int = 48, width: int = 80, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB ``uint8 [H, W, 3]`` images that differ a lot (flat colours, ramps, smooth noise)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        base = rng.integers(0, 256, size=3).astype(np.float32)
        ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * rng.integers(-128, 128, size=3)
        coarse = rng.integers(0, 256, size=(3, 4, 3)).astype(np.float32)
        noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR) * (index % 3) / 4
        images.append(np.clip(base + ramp + noise - 32 * (index % 3), 0, 255).astype(np.uint8))
    return images


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """Save RGB ``uint8 [H, W, 3]`` in the format of ``path``'s suffix (JPEGs at quality 95)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    options = [cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else []
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), options)
    return path


def write_photo_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """The photos, plus what predict must skip or report; returns ``(readable, unreadable)``, each
    sorted by path. Also written: a JPEG, hidden files, a hidden folder and a non-image file."""
    readable = [write_image(root / name, image) for name, image in zip(PHOTO_NAMES, photo_arrays())]
    readable.append(write_image(root / "nested" / "g_photo.jpg", distinct_images(1, seed=4)[0]))
    write_image(root / ".hidden.png", distinct_images(1, seed=1)[0])
    write_image(root / "nested" / ".cache" / "thumb.png", distinct_images(1, seed=2)[0])
    (root / "notes.txt").write_text("not an image")
    whole = cv2.imencode(".jpg", distinct_images(1, seed=3)[0])[1].tobytes()
    (root / "broken.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated download
    (root / "nested" / "empty.png").write_bytes(b"")
    unreadable = [root / "broken.jpg", root / "nested" / "empty.png"]
    return sorted(readable, key=str), sorted(unreadable, key=str)


def photo_arrays() -> list[np.ndarray]:
    return distinct_images(len(PHOTO_NAMES))


def preprocess(info: ClassifierInfo, images: Sequence[Any]) -> torch.Tensor:
    """``float32 [N, 3, S, S]``: image files or RGB arrays as the checkpoint's eval transform makes them."""
    transform = info.eval_transform()
    return torch.stack([transform(image if isinstance(image, np.ndarray) else read_image(image))
                        for image in images])


def _center_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Shift the head's bias so each class's mean logit over ``images`` is zero; returns the logits."""
    bias = model.head.fc.bias if hasattr(model.head, "fc") else model.head.class_bias
    with torch.no_grad():
        bias.sub_(model(images).mean(dim=0))
        return model(images)


@functools.cache
def _session_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tresnet-ft-test-checkpoints-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def single_label_checkpoint() -> Path:
    """Five classes, linear head, centred on the photos."""
    info = ClassifierInfo(arch="tresnet_m", classes=CLASSES, task="single_label",
                          preprocessing=EvalPreprocessing(IMAGE_SIZE))
    model = filled_model(len(CLASSES))
    _center_logits(model, preprocess(info, photo_arrays()))
    return _write(_session_folder() / "single_label.ckpt", model, info)


@functools.cache
def multi_label_checkpoint() -> Path:
    """Four tags, ML-Decoder head, tuned per-class thresholds: tag ``c`` sits halfway between the
    ``c+1``-th and ``c+2``-th lowest scores over the photos, so 5, 4, 3 and 2 of the six photos pass
    the four tags (the thresholds differ from 0.5 and from each other, and none sits on a score)."""
    info = ClassifierInfo(arch="tresnet_m", classes=TAGS, task="multi_label",
                          preprocessing=EvalPreprocessing(IMAGE_SIZE),
                          head="ml_decoder", head_args=ML_DECODER_ARGS)
    model = filled_model(len(TAGS), head="ml_decoder", head_args=ML_DECODER_ARGS)
    scores = _center_logits(model, preprocess(info, photo_arrays())).sigmoid().sort(dim=0).values
    below = torch.arange(1, len(TAGS) + 1)  # photos under each tag's threshold
    columns = torch.arange(len(TAGS))
    low, high = scores[below - 1, columns], scores[below, columns]
    assert (high - low).min() > 1e-3, "a threshold would sit on a score"
    info.thresholds = {"global_threshold": 0.5, "per_class": (low + high) / 2, "default_threshold": 0.5,
                       "f1_before": 0.0, "f1_global": 0.0, "f1_after": 0.0}
    return _write(_session_folder() / "multi_label.ckpt", model, info)


_WRITTEN: dict[Path, LoadedClassifier] = {}


def _write(path: Path, model: torch.nn.Module, info: ClassifierInfo) -> Path:
    _WRITTEN[write_classifier(path, model, info)] = LoadedClassifier(model, info)
    return path


def reference_model(checkpoint: Path) -> LoadedClassifier:
    """The unfused model written to ``checkpoint`` and its info (shared: do not modify them)."""
    return _WRITTEN[checkpoint]


def reference_logits(checkpoint: Path, images: Sequence[Any]) -> torch.Tensor:
    """``[N, K]`` logits of the model written to ``checkpoint``: what predictions must match."""
    written = reference_model(checkpoint)
    with torch.no_grad():
        return written.model(preprocess(written.info, images))
