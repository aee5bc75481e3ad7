"""torch.compile keeps in-place ABN's memory saving: the compiled graph saves the norms' outputs,
not their inputs, with one graph (no break per layer) and no recompile per step.

A full TResNet-M takes minutes to compile on two CPU cores, so these tests compile its stem, first
block and first strided block (space-to-depth, anti-aliased downsampling, SE, every norm kind);
benchmarks/bench_gpu.py measures the whole model on a GPU.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tresnet_ft import create_model
from tresnet_ft.models import refresh_invertibility
from benchmarks.memory import saved_activation_bytes
from tresnet_ft.models.norm_act import BatchNormAct2d


class _Front(torch.nn.Module):
    """Stem, layer1[0] and layer2[0] of a TResNet-M. (Compiling an nn.Sequential itself would
    leave its torch-internal forward to eager mode and compile each block on its own.)"""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.s2d, self.stem, self.block, self.strided = body.s2d, body.conv1, body.layer1[0], body.layer2[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.strided(self.block(self.stem(self.s2d(x))))


def _front(norm: str) -> torch.nn.Module:
    """:class:`_Front` with norms scaled as after loading published weights."""
    torch.manual_seed(0)
    front = _Front(create_model("tresnet_m", 10, norm=norm).body).train()
    with torch.no_grad():
        for m in front.modules():
            if isinstance(m, BatchNormAct2d):
                m.weight.uniform_(0.5, 1.5)
    return front


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)


@pytest.mark.slow
def test_compiled_inplace_abn_saves_what_eager_saves_in_one_graph_without_recompiles():
    torch._dynamo.reset()
    counters.clear()
    x = _images()
    eager_bn = saved_activation_bytes(_front("bn"), x)
    eager = _front("inplace_abn")
    compiled = _front("inplace_abn")
    compiled.compile()
    eager_bytes = saved_activation_bytes(eager, x)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (eager, compiled)]
    for _ in range(3):  # training steps: the weights change, the compiled graph must not
        outputs = []
        for model, optimizer in zip((eager, compiled), optimizers):
            refresh_invertibility(model)
            out = model(x)
            out.square().mean().backward()
            outputs.append(out.detach())
            optimizer.step()
            optimizer.zero_grad()
        torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    refresh_invertibility(compiled)
    compiled_bytes = saved_activation_bytes(compiled, x)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # compiled once, reused at every step
    assert compiled_bytes <= 1.02 * eager_bytes, (compiled_bytes, eager_bytes)
    assert compiled_bytes <= 0.7 * eager_bn, (compiled_bytes, eager_bn)


@pytest.mark.slow
def test_compiled_layers_keep_their_input_until_refreshed():
    """Without a refresh a compiled layer cannot read its weights: it keeps its input (safe)."""
    torch._dynamo.reset()
    x = _images()
    model = _front("inplace_abn")
    model.compile()
    unrefreshed = saved_activation_bytes(model, x)
    refresh_invertibility(model)
    refreshed = saved_activation_bytes(model, x)
    assert refreshed < 0.9 * unrefreshed
