"""The small building blocks of TResNet: stem, anti-aliased downsampling, SE, conv+norm+act.

The two fixed linear ops (blur and shortcut average pool) have hand-written backward passes that
need only the input's shape, so autograd stores no activation for them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm_act import BatchNormAct2d, create_norm_act
from ..errors import InvalidValueError


class SpaceToDepth(nn.Module):
    """Rearrange each ``block × block`` patch into channels (TResNet's stem).

    Channel order is (row in block, column in block, input channel), as in timm.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C·block², H/block, W/block]``; H and W divisible by ``block``.
    """

    def __init__(self, block: int = 4) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block
        if h % b or w % b:
            raise InvalidValueError(f"Expected height and width divisible by {b}, but got {h}x{w}.")
        x = x.view(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n, c * b * b, h // b, w // b)


class _ShapeOnlyLinear(torch.autograd.Function):
    """A fixed linear map whose backward is computed from the output gradient and input shape.

    ``forward_fn(x)`` and ``backward_fn(grad, input_like)`` are plain functions; ``input_like`` is
    an uninitialised tensor with the input's shape and layout (its values are never read).
    """

    @staticmethod
    def forward(ctx, x, forward_fn, backward_fn):
        ctx.backward_fn = backward_fn
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        return forward_fn(x)

    @staticmethod
    def backward(ctx, grad):
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        input_like = torch.empty(ctx.input_shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)
        return ctx.backward_fn(grad, input_like), None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` for a dense NHWC 4-D tensor, else ``contiguous_format``."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _reflect_pad_1(x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad H and W by 1 with plain copies, keeping ``x``'s memory format.

    ``F.pad(mode="reflect")`` has no NHWC CUDA kernel, so it would convert the layout both ways.
    The values equal ``F.pad``'s, so the conv that follows gives bit-identical results.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, H+2, W+2]``; H, W >= 2.
    """
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise InvalidValueError(f"Reflect padding by 1 needs height and width >= 2, but got {h}x{w}.")
    if torch.onnx.is_in_onnx_export():
        # ONNX has a reflect Pad op; the writes below would export as a chain of ScatterNDs.
        return F.pad(x, (1, 1, 1, 1), mode="reflect")
    out = torch.empty((n, c, h + 2, w + 2), dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    out[:, :, 1:-1, 1:-1] = x
    out[:, :, 1:-1, 0] = x[:, :, :, 1]
    out[:, :, 1:-1, -1] = x[:, :, :, -2]
    # Full padded rows, so the corners reflect twice: (-1, -1) holds x[1, 1].
    out[:, :, 0] = out[:, :, 2]
    out[:, :, -1] = out[:, :, -3]
    return out


def _reflect_pad_1_backward(grad_padded: torch.Tensor, input_like: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`_reflect_pad_1`: fold each border onto the row/column it copied.

    Overwrites ``grad_padded`` (a temporary) and writes the result into ``input_like``.

    Shapes:
        ``grad_padded [N, C, H+2, W+2]``, ``input_like [N, C, H, W]`` -> ``[N, C, H, W]``.
    """
    g = grad_padded
    # Rows first over the full width, so the corners reach x[1, 1] etc. via the column fold.
    g[:, :, 2] += g[:, :, 0]
    g[:, :, -3] += g[:, :, -1]
    g[:, :, 1:-1, 2] += g[:, :, 1:-1, 0]
    g[:, :, 1:-1, -3] += g[:, :, 1:-1, -1]
    return input_like.copy_(g[:, :, 1:-1, 1:-1])


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad by 1, then a fixed depthwise
    ``[1, 2, 1] ⊗ [1, 2, 1] / 16`` filter with stride 2. Keeps the input's memory format in
    forward and backward.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, ceil(H/2), ceil(W/2)]``; H, W >= 2.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :]) / 16.0
        # Not persistent: it is a constant, and timm's state dicts do not carry it.
        self.register_buffer("filt", kernel.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def _filter_like(self, x: torch.Tensor) -> torch.Tensor:
        """The filter in ``x``'s dtype, with strides that name ``x``'s memory format.

        With one input channel per group the filter counts as contiguous in both formats, yet the
        conv backends pick the input gradient's layout from the weight's strides
        (``conv2d_input`` passes only a stand-in input), so the strides are set by hand: a view.
        """
        c = self.filt.shape[0]
        flat = self.filt.to(x.dtype).reshape(c, 9)
        if _memory_format(x) == torch.channels_last:
            return flat.view(c, 3, 3, 1).permute(0, 3, 1, 2)
        return flat.view(c, 1, 3, 3)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(_reflect_pad_1(x), self._filter_like(x), stride=2, groups=x.shape[1])

    def _blur_backward(self, grad: torch.Tensor, input_like: torch.Tensor) -> torch.Tensor:
        n, c, h, w = input_like.shape
        grad_padded = torch.nn.grad.conv2d_input((n, c, h + 2, w + 2), self._filter_like(input_like), grad,
                                                 stride=2, groups=c)
        return _reflect_pad_1_backward(grad_padded, input_like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return self._blur(x)
        return _ShapeOnlyLinear.apply(x, self._blur, self._blur_backward)


def _avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


def _avg_pool_2x2_backward(grad: torch.Tensor, input_like: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.avg_pool2d_backward(grad, input_like, [2, 2], [2, 2], [0, 0], True, False, None)


class ShortcutAvgPool2d(nn.Module):
    """2×2 average pool with stride 2, ``ceil_mode=True``, ``count_include_pad=False``: the
    downsampling of a strided block's shortcut.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, ceil(H/2), ceil(W/2)]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return _avg_pool_2x2(x)
        return _ShapeOnlyLinear.apply(x, _avg_pool_2x2, _avg_pool_2x2_backward)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global mean → 1×1 conv → ReLU → 1×1 conv → sigmoid gate.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    def __init__(self, channels: int, reduced_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced_channels, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(reduced_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class ConvNormAct(nn.Module):
    """Conv (no bias) → norm+activation, optionally followed by anti-aliased downsampling.

    With ``anti_alias=True`` the conv runs at stride 1 and :class:`BlurPool2d` does the stride-2
    step, as TResNet does for every strided 3×3 conv. Children are named ``conv``, ``bn`` (and
    ``aa``) to match timm's state-dict keys.

    Shapes:
        ``[N, C_in, H, W]`` -> ``[N, C_out, H', W']``; ``H' = H/2`` when ``anti_alias``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, norm: str,
                 activation: str = "leaky_relu", slope: float = 1e-3, anti_alias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1,
                              padding=kernel_size // 2, bias=False)
        self.bn: BatchNormAct2d = create_norm_act(norm, out_channels, activation, slope)
        self.aa = BlurPool2d(out_channels) if anti_alias else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aa(self.bn(self.conv(x)))
