"""Classifier heads: ML-Decoder parity with the original implementation, shapes, gradients."""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tresnet_ft.heads import HEADS, MLDecoder, convert_ml_decoder_state_dict, create_head

REFERENCE = torch.load(
    Path(__file__).parent / "fixtures" / "heads_losses_reference.pt", weights_only=True
)
ML_DECODER_CASES = REFERENCE["ml_decoder"]

# A small decoder keeps the shape and gradient tests fast; parity uses the real sizes.
SMALL = dict(embed_dim=32, num_heads=4, ffn_dim=64)


def fixture_fill(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The weights of tests/fixtures/README.md for the "heads" rows, rebuilt from the key name."""
    z = np.random.RandomState(zlib.crc32(key.encode("utf-8"))).standard_normal(shape)
    z = z.astype(np.float32)
    if key.endswith(".bias") or key.endswith("_bias"):
        value = 0.1 * z
    elif len(shape) == 1:
        value = 1 + 0.1 * z
    else:
        value = z * np.sqrt(1.0 / np.prod(shape[1:]))
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def original_state_dict(case: dict) -> dict[str, torch.Tensor]:
    return {key: fixture_fill(key, tuple(shape)) for key, shape in case["manifest"]}


def build_reference_head(case: dict) -> MLDecoder:
    return MLDecoder(2048, case["num_classes"], num_groups=case["num_of_groups"]).eval()


@pytest.mark.parametrize("index", range(len(ML_DECODER_CASES)))
def test_ml_decoder_reproduces_original_logits_from_original_keys(index: int) -> None:
    case = ML_DECODER_CASES[index]
    head = build_reference_head(case)
    head.load_state_dict(original_state_dict(case))  # strict: every key must map
    with torch.no_grad():
        logits = head(case["features"])
    assert logits.shape == case["logits"].shape
    torch.testing.assert_close(logits, case["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("index", range(len(ML_DECODER_CASES)))
def test_converted_state_dict_round_trips(index: int) -> None:
    case = ML_DECODER_CASES[index]
    head = build_reference_head(case)
    head.load_state_dict(convert_ml_decoder_state_dict(original_state_dict(case)))
    reloaded = build_reference_head(case)
    reloaded.load_state_dict(head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(case["features"]), case["logits"], atol=1e-4, rtol=0)


def test_original_keys_load_under_an_outer_prefix() -> None:
    case = ML_DECODER_CASES[0]
    model = torch.nn.Module()
    model.head = build_reference_head(case)
    prefixed = {"head." + key: value for key, value in original_state_dict(case).items()}
    model.load_state_dict(prefixed)
    torch.testing.assert_close(
        model.head.class_bias, fixture_fill("decoder.duplicate_pooling_bias", (20,))
    )


def test_converter_renames_only_original_keys() -> None:
    converted = convert_ml_decoder_state_dict(
        {
            "head.decoder.duplicate_pooling": 1,
            "head.decoder.duplicate_pooling_bias": 2,
            "head.decoder.layers.0.multihead_attn.in_proj_weight": 3,
            "decoder.query_embed.weight": 4,
            "body.layer1.0.conv1.weight": 5,
        }
    )
    assert converted == {
        "head.group_fc_weight": 1,
        "head.class_bias": 2,
        "head.decoder_layer.cross_attn.in_proj_weight": 3,
        "queries": 4,
        "body.layer1.0.conv1.weight": 5,
    }


def test_group_fc_matches_a_per_group_reference() -> None:
    torch.manual_seed(0)
    head = MLDecoder(16, num_classes=7, num_groups=3, **SMALL).eval()
    features = torch.randn(2, 16, 3, 3)
    decoded = head.decoder_layer(
        head.queries.expand(2, -1, -1),
        torch.relu(head.embed(features.flatten(2).transpose(1, 2))),
    )
    per_group = [decoded[:, g] @ head.group_fc_weight[g] for g in range(3)]  # 3 groups x 3 outputs
    expected = torch.cat(per_group, dim=1)[:, :7] + head.class_bias
    with torch.no_grad():
        torch.testing.assert_close(head(features), expected)


@pytest.mark.parametrize(
    ("num_classes", "num_groups", "expected_groups"),
    [(20, -1, 20), (250, -1, 100), (80, 20, 20), (5, 50, 5), (1, -1, 1)],
)
def test_query_groups_and_outputs_per_group(
    num_classes: int, num_groups: int, expected_groups: int
) -> None:
    head = MLDecoder(16, num_classes, num_groups=num_groups, **SMALL)
    assert head.queries.shape == (expected_groups, SMALL["embed_dim"])
    assert head.group_fc_weight.shape[-1] == math.ceil(num_classes / expected_groups)
    assert head.class_bias.shape == (num_classes,)


def test_queries_are_saved_but_not_learned() -> None:
    head = MLDecoder(16, 10, **SMALL)
    assert "queries" in head.state_dict()
    assert all(param is not head.queries for param in head.parameters())


@pytest.mark.parametrize("spatial", [(7, 7), (14, 14), (5, 9), (1, 1)])
@pytest.mark.parametrize("num_classes", [1, 10, 250])
def test_ml_decoder_any_resolution(spatial: tuple[int, int], num_classes: int) -> None:
    head = MLDecoder(64, num_classes, **SMALL).eval()
    with torch.no_grad():
        logits = head(torch.randn(3, 64, *spatial))
    assert logits.shape == (3, num_classes)
    assert torch.isfinite(logits).all()


def test_ml_decoder_ignores_token_order() -> None:
    # No positional encoding: a permutation of spatial positions must not change the logits.
    torch.manual_seed(0)
    head = MLDecoder(32, 12, **SMALL).eval()
    features = torch.randn(2, 32, 4, 6)
    permuted = features.flatten(2)[:, :, torch.randperm(24)].reshape(2, 32, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(head(permuted), head(features), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("num_classes", [1, 10, 120])  # single-output, single-label, multi-label
def test_every_head_shape_and_gradient_into_features(name: str, num_classes: int) -> None:
    head_args = SMALL if name == "ml_decoder" else {}
    head = create_head(name, 64, num_classes, **head_args).train()
    features = torch.randn(4, 64, 7, 7, requires_grad=True)
    logits = head(features)
    assert logits.shape == (4, num_classes)
    logits.square().sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert features.grad.abs().sum() > 0


def test_ml_decoder_under_bfloat16_autocast() -> None:
    head = MLDecoder(64, 30, **SMALL).eval()
    features = torch.randn(2, 64, 7, 7)
    with torch.no_grad():
        reference = head(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = head(features)
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), reference, atol=0.1, rtol=0.1)


def test_bad_inputs_raise_value_errors() -> None:
    head = MLDecoder(64, 10, **SMALL)
    expected = r"Expected features of shape \[B, 64, H, W\], but got \[2, 32, 7, 7\]"
    with pytest.raises(ValueError, match=expected):
        head(torch.randn(2, 32, 7, 7))
    with pytest.raises(ValueError, match="but got \\[2, 64\\]"):
        head(torch.randn(2, 64))
    with pytest.raises(ValueError, match="num_groups"):
        MLDecoder(64, 10, num_groups=0)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MLDecoder(64, 10, embed_dim=30, num_heads=8)
    with pytest.raises(ValueError, match="'linear', 'ml_decoder'"):
        create_head("mlp", 64, 10)
