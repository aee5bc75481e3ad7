"""The model stays channels_last (NHWC) through forward and backward, anti-alias blur included.

A layout conversion costs a full copy of the activation, and reflection padding has no NHWC CUDA
kernel, so these tests watch every aten op of a strided block for either.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tresnet_ft import create_model
from tresnet_ft.models.layers import BlurPool2d

NHWC = torch.channels_last


def _is_nhwc_only(t: object) -> bool:
    """A dense 4-D tensor in NHWC that is not also NCHW-contiguous (so its layout is unambiguous)."""
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_contiguous(memory_format=NHWC)
            and not t.is_contiguous())


def _is_nchw_only(t: object) -> bool:
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_contiguous()
            and not t.is_contiguous(memory_format=NHWC))


class _LayoutBreaks(TorchDispatchMode):
    """Records ops that turn an NHWC tensor into an NCHW one, and every reflection-pad op.

    Broadcast results (e.g. autograd's ``expand(...) / n`` for a mean) take no NHWC input, so
    they are not counted: only real conversions of an NHWC activation are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.breaks: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        inputs = tree_flatten((args, kwargs))[0]
        if "reflection_pad" in name:
            self.breaks.append(name)
        elif any(map(_is_nhwc_only, inputs)) and any(map(_is_nchw_only, tree_flatten(out)[0])):
            self.breaks.append(name)
        return out


def _layout_breaks(module: torch.nn.Module, x: torch.Tensor) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Run forward and backward of ``module`` on ``x`` under :class:`_LayoutBreaks`."""
    x = x.contiguous(memory_format=NHWC).requires_grad_()
    with _LayoutBreaks() as mode:
        y = module(x)
        y.backward(torch.randn_like(y))
    return mode.breaks, y, x.grad


@pytest.mark.parametrize("shape", [(2, 8, 15, 16), (2, 8, 16, 15), (2, 8, 2, 3)])
@pytest.mark.parametrize("converted", [True, False], ids=["module_to_nhwc", "fresh_module"])
def test_blur_forward_and_backward_stay_channels_last(shape, converted):
    # A fresh module's filter has NCHW strides; the layer must follow the input, not the filter.
    torch.manual_seed(0)
    layer = BlurPool2d(shape[1])
    if converted:
        layer.to(memory_format=NHWC)
    breaks, y, grad = _layout_breaks(layer, torch.randn(shape))
    assert breaks == []
    assert _is_nhwc_only(y) and _is_nhwc_only(grad)


def test_strided_block_forward_and_backward_stay_channels_last():
    torch.manual_seed(0)
    model = create_model("tresnet_m", 10, channels_last=True).train()
    block = model.body.layer2[0]  # BasicBlock, stride 2: blur in conv1, avg pool in the shortcut
    breaks, y, grad = _layout_breaks(block, torch.randn(2, 64, 16, 16))
    assert breaks == []
    assert _is_nhwc_only(y) and _is_nhwc_only(grad)


def _reference_blur(x: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """timm's definition: reflect pad by 1, then the depthwise filter with stride 2."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, filt.to(x.dtype), stride=2, groups=x.shape[1])


@pytest.mark.parametrize("hw", [(2, 2), (2, 7), (3, 2), (5, 5), (8, 8), (9, 14), (17, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, NHWC])
def test_blur_equals_reflect_padded_conv_exactly(hw, dtype, layout):
    torch.manual_seed(0)
    channels = 5
    layer = BlurPool2d(channels).to(memory_format=layout)
    x = torch.randn(3, channels, *hw, dtype=dtype).contiguous(memory_format=layout)
    expected = _reference_blur(x, layer.filt)
    assert expected.shape[-2:] == ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer(x.requires_grad_()).detach(), expected)


@pytest.mark.parametrize("hw", [(2, 2), (3, 4), (7, 6)])
def test_blur_gradient_matches_reflect_padded_conv(hw):
    torch.manual_seed(0)
    layer = BlurPool2d(4).to(memory_format=NHWC)
    x = torch.randn(2, 4, *hw).contiguous(memory_format=NHWC).requires_grad_()
    grad_out = torch.randn(2, 4, (hw[0] + 1) // 2, (hw[1] + 1) // 2)
    (got,) = torch.autograd.grad(layer(x), x, grad_out)
    (expected,) = torch.autograd.grad(_reference_blur(x, layer.filt), x, grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export_keeps_a_single_reflect_pad(tmp_path):
    # Export takes F.pad's path: ONNX has a reflect Pad, the NHWC copies would become ScatterNDs.
    import onnx  # a dependency: fail, never skip
    path = tmp_path / "blur.onnx"
    torch.onnx.export(BlurPool2d(3).eval(), (torch.randn(2, 3, 7, 6),), str(path), dynamo=False, opset_version=17)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Pad") == 1 and "ScatterND" not in ops
