"""What gets exported: the fused classifier, optionally behind a ``uint8 → float`` input stage.

* ``input_dtype="float32"`` (default): input ``float32 [B, 3, S, S]``, RGB, already preprocessed
  the checkpoint's way: ``(pixels / 255 - mean) / std`` (TResNet: mean 0, std 1, so ``pixels / 255``).
* ``input_dtype="uint8"``: input ``uint8 [B, 3, S, S]``, RGB pixels; the exported graph does the
  scaling and normalisation itself, so a consumer only has to resize (and pays 4x less to copy).

Either way the consumer resizes to ``S x S`` as the sidecar JSON describes, and the output is
logits ``float32 [B, K]`` (softmax for single-label, sigmoid for multi-label).
"""
from __future__ import annotations

import torch
from torch import nn

from ..classifier.checkpoint import ClassifierInfo
from ..data.preprocessing import EvalPreprocessing
from ..errors import InvalidValueError

INPUT_DTYPES = ("float32", "uint8")


class Uint8Input(nn.Module):
    """``uint8 [B, 3, S, S]`` RGB → ``(x / 255 - mean) / std`` → ``model`` → logits ``[B, K]``."""

    def __init__(self, model: nn.Module, preprocessing: EvalPreprocessing) -> None:
        super().__init__()
        self.model, self.preprocessing = model, preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessing.to_float(images))


def exportable_model(model: nn.Module, info: ClassifierInfo, input_dtype: str) -> nn.Module:
    """``model`` as it will be exported for inputs of ``input_dtype`` (see the module doc)."""
    if input_dtype not in INPUT_DTYPES:
        raise InvalidValueError(f"Expected input_dtype to be one of {list(INPUT_DTYPES)}, but got {input_dtype!r}.")
    model = model.eval()
    return Uint8Input(model, info.preprocessing).eval() if input_dtype == "uint8" else model


def sample_batch(info: ClassifierInfo, batch_size: int, input_dtype: str, seed: int = 0) -> torch.Tensor:
    """A deterministic ``[batch_size, 3, S, S]`` input of the exported kind: random pixels,
    preprocessed the checkpoint's way for ``float32``, raw for ``uint8``."""
    generator = torch.Generator().manual_seed(seed)
    size = (batch_size, 3, info.image_size, info.image_size)
    pixels = torch.randint(0, 256, size, generator=generator, dtype=torch.uint8)
    return pixels if input_dtype == "uint8" else info.preprocessing.to_float(pixels)
