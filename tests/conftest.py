"""Shared test helpers: the reference-fixture weight fill and the GPU marker."""
from __future__ import annotations

import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# ONNX exports cached by `--runtime onnxruntime` (and by serve's auto runtime) go to a folder of this
# session, inherited by the CLI subprocesses, never to the user's ~/.cache/tresnet-ft/onnx.
os.environ["TRESNET_FT_CACHE"] = tempfile.mkdtemp(prefix="tresnet-ft-test-cache-")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def reference_tresnet_fill(manifest) -> dict[str, torch.Tensor]:
    """Rebuild the parity fixture's weights from its manifest (rule table in tests/fixtures/README.md)."""
    state = {}
    for key, shape, dtype in manifest:
        if "int" in dtype:
            state[key] = torch.zeros(shape, dtype=torch.long)
            continue
        z = torch.from_numpy(
            np.random.RandomState(zlib.crc32(key.encode("utf-8"))).standard_normal(shape).astype(np.float32))
        if key.endswith("running_var"):
            state[key] = 1 + 0.1 * z.abs()
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = 0.1 * z
        elif len(shape) == 1:
            state[key] = 1 + 0.1 * z
        else:
            state[key] = z * math.sqrt(1 / int(np.prod(shape[1:])))
    return state


@pytest.fixture(scope="session")
def parity():
    return torch.load(FIXTURES / "tresnet_timm_parity.pt", weights_only=True)
