"""ML-Decoder head (Ridnik et al., 2021, "ML-Decoder: Scalable and Versatile Classification Head").

The backbone map is read as a set of spatial tokens. A fixed set of query vectors attends to
them through one transformer-decoder layer that has cross-attention but no self-attention, and a
group fully-connected layer turns each query into ``ceil(K / G)`` logits.

The original implementation nests everything under ``decoder.*`` with names such as
``embed_standart`` and ``duplicate_pooling``. This module uses descriptive names instead and maps
the original keys on load (:func:`convert_ml_decoder_state_dict`), so the published checkpoints
load with plain ``load_state_dict``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from ..errors import InvalidValueError

DEFAULT_MAX_GROUPS = 100

# Original names below ``decoder.`` -> ours. Tensors owned by the head itself are matched as whole
# keys (a prefix match would confuse ``duplicate_pooling`` with ``duplicate_pooling_bias``);
# submodules are matched by prefix.
_ORIGINAL_EXACT_KEYS = {
    "query_embed.weight": "queries",
    "duplicate_pooling": "group_fc_weight",
    "duplicate_pooling_bias": "class_bias",
}
_ORIGINAL_PREFIXES = {
    "embed_standart.": "embed.",
    "layers.0.norm1.": "decoder_layer.query_norm.",
    "layers.0.multihead_attn.": "decoder_layer.cross_attn.",
    "layers.0.norm2.": "decoder_layer.attn_norm.",
    "layers.0.linear1.": "decoder_layer.ffn_in.",
    "layers.0.linear2.": "decoder_layer.ffn_out.",
    "layers.0.norm3.": "decoder_layer.ffn_norm.",
}
_ORIGINAL_ROOT = "decoder."


def _rename_below_root(key: str) -> str | None:
    """Our name for an original key that starts with ``decoder.``, or None if it is not one."""
    if not key.startswith(_ORIGINAL_ROOT):
        return None
    inner = key[len(_ORIGINAL_ROOT) :]
    if inner in _ORIGINAL_EXACT_KEYS:
        return _ORIGINAL_EXACT_KEYS[inner]
    for original, ours in _ORIGINAL_PREFIXES.items():
        if inner.startswith(original):
            return ours + inner[len(original) :]
    return None


def _convert_original_key(key: str) -> str:
    """Map an original key with any outer prefix (``head.decoder.*``) to ours; others pass."""
    parts = key.split(".")
    for depth in range(len(parts)):
        renamed = _rename_below_root(".".join(parts[depth:]))
        if renamed is not None:
            return ".".join(parts[:depth] + [renamed])
    return key


def convert_ml_decoder_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the keys of an original ML-Decoder state dict to :class:`MLDecoder`'s names.

    Keys may carry any outer prefix (``head.decoder.embed_standart.weight`` becomes
    ``head.embed.weight``), so a whole model checkpoint can be passed; keys that are not
    original ML-Decoder keys are returned unchanged. Tensors are not copied.

    Example:
        >>> sd = {"decoder.duplicate_pooling_bias": torch.zeros(3), "backbone.x": torch.ones(1)}
        >>> sorted(convert_ml_decoder_state_dict(sd))
        ['backbone.x', 'class_bias']
    """
    return {_convert_original_key(key): value for key, value in state_dict.items()}


class CrossAttentionDecoderLayer(nn.Module):
    """A transformer-decoder layer without self-attention, as ML-Decoder defines it.

    Post-norm order: ``query_norm`` -> cross-attention + residual -> ``attn_norm`` -> feed-forward
    + residual -> ``ffn_norm``.

    Shapes:
        queries ``[B, G, D]``, tokens ``[B, N, D]`` -> ``[B, G, D]``.
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(embed_dim)
        self.cross_attn = nn.MultiheadAttention(
            embed_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.ffn_in = nn.Linear(embed_dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, embed_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.query_dropout = nn.Dropout(dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.ffn_hidden_dropout = nn.Dropout(dropout)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # The original adds the queries to a dropped-out copy of themselves where a decoder would
        # have self-attention. In eval mode that doubles them, which changes LayerNorm's output
        # through its eps; published weights were trained with it, so keep it.
        x = self.query_norm(queries + self.query_dropout(queries))
        attended = self.cross_attn(x, tokens, tokens, need_weights=False)[0]
        x = self.attn_norm(x + self.attn_dropout(attended))
        hidden = self.ffn_hidden_dropout(F.relu(self.ffn_in(x)))
        return self.ffn_norm(x + self.ffn_dropout(self.ffn_out(hidden)))


class MLDecoder(nn.Module):
    """ML-Decoder classification head for single-label and multi-label outputs.

    Args:
        num_features: channels ``C`` of the backbone map.
        num_classes: number of outputs ``K``.
        num_groups: number of queries ``G``; ``-1`` means ``min(100, K)``. Values above ``K`` are
            cut to ``K``, as in the original.
        embed_dim: width ``D`` of the tokens and queries.
        num_heads: attention heads (must divide ``embed_dim``).
        ffn_dim: hidden width of the feed-forward block.
        dropout: dropout in attention, feed-forward and residual branches.

    Shapes:
        ``[B, C, H, W]`` at any ``H, W`` -> ``[B, K]``.

    Example:
        >>> head = MLDecoder(num_features=64, num_classes=5, embed_dim=32, num_heads=4, ffn_dim=64)
        >>> head(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        num_groups: int = -1,
        embed_dim: int = 768,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _validate_arguments(num_features, num_classes, num_groups, embed_dim, num_heads)
        groups = min(DEFAULT_MAX_GROUPS if num_groups == -1 else num_groups, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        self.num_groups = groups
        self.outputs_per_group = math.ceil(num_classes / groups)

        self.embed = nn.Linear(num_features, embed_dim)
        # The queries stay fixed: the paper shows learnable ones bring nothing, and a buffer keeps
        # them out of the optimizer and weight decay while still saving them in checkpoints.
        self.register_buffer("queries", torch.randn(groups, embed_dim))
        self.decoder_layer = CrossAttentionDecoderLayer(embed_dim, num_heads, ffn_dim, dropout)
        self.group_fc_weight = nn.Parameter(torch.empty(groups, embed_dim, self.outputs_per_group))
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        # Xavier-normal for each group's own [D -> outputs_per_group] map.
        fan_sum = embed_dim + self.outputs_per_group
        nn.init.normal_(self.group_fc_weight, std=math.sqrt(2.0 / fan_sum))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.num_features:
            raise InvalidValueError(
                f"Expected features of shape [B, {self.num_features}, H, W], "
                f"but got {list(features.shape)}."
            )
        tokens = F.relu(self.embed(features.flatten(2).transpose(1, 2)))
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        decoded = self.decoder_layer(queries, tokens)
        # Group FC: query g produces outputs g*F .. g*F+F-1, all groups in one batched product.
        group_logits = torch.einsum("bgd,gdf->bgf", decoded, self.group_fc_weight)
        return group_logits.flatten(1)[:, : self.num_classes] + self.class_bias

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Accept the original checkpoints' key names: rename ours in place before the usual load
        # (load_state_dict hands every module a private copy, so the caller's dict is untouched).
        for key in [key for key in state_dict if key.startswith(prefix + _ORIGINAL_ROOT)]:
            renamed = _rename_below_root(key[len(prefix) :])
            if renamed is not None:
                state_dict[prefix + renamed] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _validate_arguments(
    num_features: int, num_classes: int, num_groups: int, embed_dim: int, num_heads: int
) -> None:
    if num_features < 1 or num_classes < 1:
        raise InvalidValueError(
            "Expected num_features and num_classes to be positive integers, "
            f"but got {num_features} and {num_classes}."
        )
    if num_groups != -1 and num_groups < 1:
        raise InvalidValueError(
            f"Expected num_groups to be -1 or a positive integer, but got {num_groups}."
        )
    if embed_dim % num_heads != 0:
        raise InvalidValueError(
            f"Expected embed_dim to be divisible by num_heads, but got {embed_dim} and {num_heads}."
        )
