"""Fold every norm into its preceding conv for inference and export."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import ConvNormAct
from .norm_act import BatchNormAct2d


class FrozenActivation(nn.Module):
    """What is left of a norm+activation once the norm is folded away: the activation alone."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def extra_repr(self) -> str:
        return "identity" if self.slope == 1.0 else f"leaky_relu({self.slope:g})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: the fused model never needs the conv output again, and on CPU a fresh
        # activation-sized allocation costs page faults.
        return x if self.slope == 1.0 else nn.functional.leaky_relu(x, self.slope, inplace=True)


@torch.no_grad()
def fuse_norm_into_conv(conv: nn.Conv2d, norm: BatchNormAct2d) -> nn.Conv2d:
    """A conv with bias computing ``norm(conv(x))`` (eval statistics), minus the activation.

    ``w' = w · γ / sqrt(var + eps)``, ``b' = β - mean · γ / sqrt(var + eps)`` (plus the scaled
    conv bias, if any).
    """
    scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device)
    fused.weight.copy_(conv.weight.float() * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
    fused.bias.copy_(norm.bias.float() + (conv_bias - norm.running_mean.float()) * scale)
    return fused.to(conv.weight.dtype)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Return an eval-only copy of ``model`` with every ``ConvNormAct``'s norm folded into its conv.

    The copy computes the same outputs as ``model.eval()`` (to float rounding), runs in
    channels_last, and has ``requires_grad=False`` everywhere. The original is left untouched.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvNormAct) and isinstance(module.bn, BatchNormAct2d):
            module.conv = fuse_norm_into_conv(module.conv, module.bn)
            module.bn = FrozenActivation(module.bn.slope)
    fused.requires_grad_(False)
    if hasattr(fused, "channels_last"):
        fused.channels_last = True
    return fused.to(memory_format=torch.channels_last)
