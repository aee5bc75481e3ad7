"""The TResNet family (Ridnik et al., 2020), with timm's state-dict keys.

File order follows timm: blocks, model, variant table. Variants are data (:data:`ARCHS`); the
builder with pretrained weights lives in :mod:`tresnet_ft.models.factory`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..heads import create_head
from .layers import ConvNormAct, ShortcutAvgPool2d, SpaceToDepth, SqueezeExcite
from ..errors import InvalidValueError

BLOCK_SLOPE = 1e-3  # leaky ReLU slope inside blocks
STEM_SLOPE = 1e-2  # leaky ReLU slope of the stem conv


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of some samples."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


def _make_shortcut(in_ch: int, out_ch: int, stride: int, norm: str) -> Optional[nn.Sequential]:
    """AvgPool(2) (when strided) then 1×1 conv + BN, or ``None`` when the identity fits."""
    if stride == 1 and in_ch == out_ch:
        return None
    layers: list[nn.Module] = [ShortcutAvgPool2d()] if stride == 2 else []
    layers.append(ConvNormAct(in_ch, out_ch, 1, norm=norm, activation="identity"))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """What both block kinds share: ``act(drop_path(branch(x)) + shortcut(x))``."""

    def __init__(self, downsample: nn.Module | None, drop_path_rate: float) -> None:
        super().__init__()
        self.downsample = downsample
        self.act = nn.ReLU(inplace=True)
        self.drop_path_rate = drop_path_rate

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(_drop_path(self.branch(x), self.drop_path_rate, self.training) + shortcut)


class BasicBlock(_ResidualBlock):
    """Two 3×3 convs; SE after the second (reduction ``max(planes/4, 64)``)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, use_se: bool, norm: str,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(_make_shortcut(in_ch, planes, stride, norm), drop_path_rate)
        self.conv1 = ConvNormAct(in_ch, planes, 3, norm=norm, slope=BLOCK_SLOPE, anti_alias=stride == 2)
        self.conv2 = ConvNormAct(planes, planes, 3, norm=norm, activation="identity")
        self.se = SqueezeExcite(planes, max(planes // 4, 64)) if use_se else None

    def last_norm(self) -> nn.Module:
        return self.conv2.bn

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out if self.se is None else self.se(out)


class Bottleneck(_ResidualBlock):
    """1×1 → 3×3 → 1×1 (×4 channels); SE after the 3×3 (reduction ``max(planes·4/8, 64)``)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, use_se: bool, norm: str,
                 drop_path_rate: float = 0.0) -> None:
        out_ch = planes * self.expansion
        super().__init__(_make_shortcut(in_ch, out_ch, stride, norm), drop_path_rate)
        self.conv1 = ConvNormAct(in_ch, planes, 1, norm=norm, slope=BLOCK_SLOPE)
        self.conv2 = ConvNormAct(planes, planes, 3, norm=norm, slope=BLOCK_SLOPE, anti_alias=stride == 2)
        self.se = SqueezeExcite(planes, max(out_ch // 8, 64)) if use_se else None
        self.conv3 = ConvNormAct(planes, out_ch, 1, norm=norm, activation="identity")

    def last_norm(self) -> nn.Module:
        return self.conv3.bn

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return self.conv3(out if self.se is None else self.se(out))


# The SpaceToDepth stem folds 4x4 pixel blocks into channels; every later stride-2 step rounds odd
# sides up. 32 px is the smallest side whose last stage still has a pixel to blur-pad.
INPUT_MULTIPLE = 4
MIN_INPUT_SIZE = 32


def is_input_side(side: int) -> bool:
    """Whether TResNet takes images ``side`` pixels high (or wide)."""
    return side >= MIN_INPUT_SIZE and side % INPUT_MULTIPLE == 0


@dataclass(frozen=True)
class ArchSpec:
    """One TResNet variant: blocks per stage, width multiplier, and the V2 layout switch."""

    layers: tuple[int, int, int, int]
    width: float = 1.0
    v2: bool = False  # planes rounded down to a multiple of 8, Bottlenecks in every stage


ARCHS: dict[str, ArchSpec] = {
    "tresnet_m": ArchSpec((3, 4, 11, 3)),
    "tresnet_l": ArchSpec((4, 5, 18, 3), width=1.2),
    "tresnet_xl": ArchSpec((4, 5, 24, 3), width=1.3),
    "tresnet_v2_l": ArchSpec((3, 4, 23, 3), v2=True),
}


class TResNet(nn.Module):
    """TResNet backbone plus a swappable head.

    Args:
        spec: the variant (see :data:`ARCHS`).
        num_classes: outputs of the head.
        norm: ``"inplace_abn"`` (default; output-only memory for backward) or ``"bn"``.
        head: a name from :data:`tresnet_ft.heads.HEADS`; ``head_args`` go to its constructor.
        channels_last: store weights and run activations in NHWC, the fast conv layout.
        drop_path_rate: stochastic-depth rate reached by the last block (linear ramp).
        residual_init: starting scale of each residual branch's last norm. TResNet's 0 makes
            every block start as the identity; training from random weights with Adam, whose
            steps are about ``lr`` whatever the gradient, a scale of 0 needs ~100 steps before
            the branches matter, and a small value such as 0.2 skips that plateau
            (docs/RECIPES.md). Pretrained weights overwrite it.

    Input is RGB scaled to [0, 1] with no mean/std normalisation; height and width must be
    multiples of :data:`INPUT_MULTIPLE` (the SpaceToDepth stem folds 4x4 blocks) and at least
    :data:`MIN_INPUT_SIZE`. Sides that are not multiples of 32 work as in timm and the original
    code (the paper's 368 px): the anti-alias blur and the shortcut's average pool round odd
    sides up.

    Shapes:
        ``forward``: ``[B, 3, H, W]`` -> ``[B, num_classes]``;
        ``forward_features``: ``[B, 3, H, W]`` -> ``[B, num_features, ceil(H/32), ceil(W/32)]``.
    """

    def __init__(self, spec: ArchSpec, num_classes: int = 1000, *, norm: str = "inplace_abn",
                 head: str = "linear", head_args: Optional[dict[str, Any]] = None,
                 channels_last: bool = True, drop_path_rate: float = 0.0, in_chans: int = 3,
                 residual_init: float = 0.0) -> None:
        super().__init__()
        planes = int(64 * spec.width)
        if spec.v2:
            planes = planes // 8 * 8
        stage_blocks = (Bottleneck, Bottleneck) if spec.v2 else (BasicBlock, BasicBlock)
        stage_blocks += (Bottleneck, Bottleneck)
        rates = torch.linspace(0, drop_path_rate, sum(spec.layers)).tolist()

        body: "OrderedDict[str, nn.Module]" = OrderedDict()
        body["s2d"] = SpaceToDepth(4)
        body["conv1"] = ConvNormAct(in_chans * 16, planes, 3, norm=norm, slope=STEM_SLOPE)
        in_ch = planes
        for stage, (block, depth) in enumerate(zip(stage_blocks, spec.layers)):
            stage_planes = planes * 2**stage
            blocks = []
            for i in range(depth):
                blocks.append(block(in_ch, stage_planes, stride=2 if (i == 0 and stage > 0) else 1,
                                    use_se=stage < 3, norm=norm, drop_path_rate=rates.pop(0)))
                in_ch = stage_planes * block.expansion
            body[f"layer{stage + 1}"] = nn.Sequential(*blocks)
        self.body = nn.Sequential(body)
        self.num_features = in_ch
        self.head = create_head(head, self.num_features, num_classes, **(head_args or {}))
        self.head_name = head
        self.channels_last = channels_last
        self.norm = norm
        self.pretrained_cfg: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        self._init_weights(residual_init)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _init_weights(self, residual_init: float) -> None:
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        # With 0 (TResNet's choice) each residual branch starts as the identity.
        for m in self.body.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.constant_(m.last_norm().weight, residual_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, num_features, ceil(H/32), ceil(W/32)]``."""
        if x.dim() != 4 or not all(is_input_side(side) for side in x.shape[-2:]):
            raise InvalidValueError(f"Expected input [B, 3, H, W] with H and W multiples of {INPUT_MULTIPLE} and at "
                                    f"least {MIN_INPUT_SIZE}, but got {list(x.shape)}. Resize images to e.g. "
                                    "224, 368 or 448.")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, num_features, h, w]`` -> ``[B, num_classes]``."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, head: Optional[str] = None, **head_args: Any) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` outputs."""
        self.head_name = head or self.head_name
        self.head = create_head(self.head_name, self.num_features, num_classes, **head_args)
        self.head.to(device=next(self.body.parameters()).device)
