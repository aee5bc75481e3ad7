"""Losses: parity with the original ASL code, agreement with torch's losses, numerical safety."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from torch.nn import functional as F

from tresnet_ft.losses import (
    AsymmetricLoss,
    AsymmetricLossSingleLabel,
    BinaryCrossEntropy,
    LabelSmoothingCrossEntropy,
    SoftTargetCrossEntropy,
    asymmetric_loss,
    asymmetric_loss_single_label,
    binary_cross_entropy,
    cross_entropy,
    soft_target_cross_entropy,
)

REFERENCE = torch.load(
    Path(__file__).parent / "fixtures" / "heads_losses_reference.pt", weights_only=True
)


def loss_and_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor):
    logits = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(logits)
    loss.backward()
    return loss.detach(), logits.grad


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("index", range(len(REFERENCE["asl"])))
def test_asymmetric_loss_matches_reference(index: int) -> None:
    case = REFERENCE["asl"][index]
    criterion = AsymmetricLoss(
        gamma_neg=case["gamma_neg"],
        gamma_pos=case["gamma_pos"],
        clip=case["clip"],
        focal_weight_grad=case["focal_weight_has_grad"],
    )
    loss, grad = loss_and_grad(lambda x: criterion(x, case["targets"]), case["logits"])
    assert_relative_close(loss, case["loss_sum"])
    assert_relative_close(grad, case["grad"])


@pytest.mark.parametrize("index", range(len(REFERENCE["asl_single"])))
def test_single_label_asymmetric_loss_matches_reference(index: int) -> None:
    case = REFERENCE["asl_single"][index]
    criterion = AsymmetricLossSingleLabel(
        gamma_pos=case["gamma_pos"],
        gamma_neg=case["gamma_neg"],
        label_smoothing=case["label_smoothing"],
    )
    loss, grad = loss_and_grad(lambda x: criterion(x, case["labels"]), case["logits"])
    assert_relative_close(loss, case["loss_mean"])
    assert_relative_close(grad, case["grad"])


def test_focal_weight_gradient_switch_changes_the_gradient() -> None:
    case = REFERENCE["asl"][0]
    _, constant = loss_and_grad(lambda x: asymmetric_loss(x, case["targets"]), case["logits"])
    _, through = loss_and_grad(
        lambda x: asymmetric_loss(x, case["targets"], focal_weight_grad=True), case["logits"]
    )
    assert not torch.allclose(constant, through)


def test_asymmetric_loss_without_focusing_or_clip_is_bce() -> None:
    # Seeded: ASL works in probabilities, so a logit far from 0 can lose ~1e-5 relative to BCE's
    # log-sum-exp form; an unseeded draw made the 1e-5 tolerance fail now and then.
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(6, 9, generator=g) * 3, (torch.rand(6, 9, generator=g) > 0.7).float()
    asl = asymmetric_loss(logits, targets, gamma_neg=0, gamma_pos=0, clip=0, reduction="none")
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(asl, bce, rtol=1e-5, atol=1e-6)


def test_asymmetric_loss_discards_easy_negatives_and_defines_mean() -> None:
    targets = torch.zeros(2, 3)
    easy = torch.full((2, 3), -4.0)  # sigmoid(-4) = 0.018 < clip
    assert asymmetric_loss(easy, targets, clip=0.05).item() == 0.0
    logits = torch.randn(4, 5)
    targets = (torch.rand(4, 5) > 0.5).float()
    total = asymmetric_loss(logits, targets, reduction="sum")
    torch.testing.assert_close(asymmetric_loss(logits, targets, reduction="mean"), total / 20)
    assert asymmetric_loss(logits, targets, reduction="none").shape == (4, 5)


def test_single_label_asl_without_focusing_is_label_smoothed_cross_entropy() -> None:
    logits, labels = torch.randn(7, 11) * 2, torch.randint(0, 11, (7,))
    ours = asymmetric_loss_single_label(
        logits, labels, gamma_pos=0, gamma_neg=0, label_smoothing=0.2
    )
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, label_smoothing=0.2))


def test_cross_entropy_and_soft_targets_agree_with_mixup_algebra() -> None:
    logits = torch.randn(5, 8)
    labels_a, labels_b = torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,))
    lam = 0.3
    mixed = lam * F.one_hot(labels_a, 8).float() + (1 - lam) * F.one_hot(labels_b, 8).float()
    expected = lam * cross_entropy(logits, labels_a) + (1 - lam) * cross_entropy(logits, labels_b)
    torch.testing.assert_close(soft_target_cross_entropy(logits, mixed), expected)
    torch.testing.assert_close(
        LabelSmoothingCrossEntropy(0.1)(logits, labels_a),
        F.cross_entropy(logits, labels_a, label_smoothing=0.1),
    )
    assert SoftTargetCrossEntropy(reduction="none")(logits, mixed).shape == (5,)


def test_binary_cross_entropy_matches_the_formula() -> None:
    logits, targets = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    p = torch.sigmoid(logits)
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log())
    torch.testing.assert_close(binary_cross_entropy(logits, targets), by_hand.mean())
    pos_weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weighted = -(pos_weight * targets * p.log() + (1 - targets) * (1 - p).log())
    criterion = BinaryCrossEntropy(reduction="sum", pos_weight=pos_weight)
    torch.testing.assert_close(criterion(logits, targets), weighted.sum())


EXTREME_LOSSES = {
    "cross_entropy": lambda x, labels, multi: cross_entropy(x, labels, label_smoothing=0.1),
    "soft_target": lambda x, labels, multi: soft_target_cross_entropy(
        x, F.one_hot(labels, 6).float()
    ),
    "bce": lambda x, labels, multi: binary_cross_entropy(x, multi),
    "asl": lambda x, labels, multi: asymmetric_loss(x, multi),
    "asl_no_clip_focal_grad": lambda x, labels, multi: asymmetric_loss(
        x, multi, clip=0.0, gamma_pos=1, focal_weight_grad=True
    ),
    "asl_fractional_gamma": lambda x, labels, multi: asymmetric_loss(
        x, multi, gamma_neg=0.5, gamma_pos=0.5, clip=0.0, focal_weight_grad=True
    ),
    "asl_single": lambda x, labels, multi: asymmetric_loss_single_label(x, labels),
    "asl_single_fractional_gamma": lambda x, labels, multi: asymmetric_loss_single_label(
        x, labels, gamma_pos=0.5, gamma_neg=0.5
    ),
}


@pytest.mark.parametrize("name", sorted(EXTREME_LOSSES))
@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.bfloat16, torch.float16],
    ids=["fp32", "bf16_autocast", "fp16_autocast"],
)
def test_extreme_logits_give_finite_float32_loss_and_gradient(
    name: str, dtype: torch.dtype
) -> None:
    # Every combination of +-100 logits with right and wrong labels.
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0, 0.0, 100.0]] * 4, dtype=dtype)
    logits[1] = -logits[1]
    labels = torch.tensor([0, 0, 1, 4])
    multi = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]] * 4)
    multi[2] = 1 - multi[2]
    logits.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = EXTREME_LOSSES[name](logits, labels, multi)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_losses_compute_in_float32_under_autocast() -> None:
    # bf16 logits are exact in fp32, so the autocast result must equal the fp32 one exactly.
    logits = (torch.randn(8, 20) * 4).to(torch.bfloat16)
    targets = (torch.rand(8, 20) > 0.8).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = asymmetric_loss(logits, targets)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, asymmetric_loss(logits.float(), targets), rtol=0, atol=0)


def test_bad_inputs_raise_value_errors() -> None:
    logits = torch.randn(8, 20)
    expected = r"Expected targets of shape \[N, K\] matching logits \[8, 20\], but got \[8\]"
    with pytest.raises(ValueError, match=expected):
        asymmetric_loss(logits, torch.ones(8))
    with pytest.raises(ValueError, match=r"Expected integer labels of shape \[8\]"):
        asymmetric_loss_single_label(logits, torch.zeros(8, 20))
    with pytest.raises(ValueError, match=r"Expected integer labels"):
        cross_entropy(logits, torch.zeros(8))
    with pytest.raises(ValueError, match=r"shape \[N, K\], but got torch.float32 of shape \[8\]"):
        binary_cross_entropy(torch.randn(8), torch.ones(8))
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="avg")
