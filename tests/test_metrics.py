"""Metrics (functional) and threshold tuning, checked against scikit-learn and hand-computed cases.

The accumulator that feeds them batch by batch and across processes is tested in test_evaluation.py.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from tresnet_ft.classifier.thresholds import Thresholds, tune_thresholds
from tresnet_ft.training.metrics import (
    average_precision_per_class,
    confusion_counts,
    histogram_table,
    mean_over_classes_with_positives,
    score_histogram,
    single_label_scores,
    threshold_counts,
    threshold_scores,
    top_k_hits,
)


def random_multilabel(num_samples: int, num_classes: int, seed: int, decimals: int = 1):
    """Scores with many ties (rounded) that correlate with the targets."""
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(num_samples, num_classes, generator=generator) < 0.3).int()
    noise = torch.rand(num_samples, num_classes, generator=generator)
    scores = torch.round((0.35 * targets + 0.65 * noise) * 10**decimals) / 10**decimals
    return scores, targets


def sklearn_ap(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return [
        average_precision_score(targets[:, k].numpy(), scores[:, k].numpy())
        for k in range(scores.shape[1])
        if targets[:, k].any()
    ]


@pytest.mark.parametrize("decimals", [1, 4])  # many ties, almost none
def test_average_precision_matches_sklearn(decimals: int) -> None:
    scores, targets = random_multilabel(300, 12, seed=decimals, decimals=decimals)
    ours = average_precision_per_class(scores, targets)
    np.testing.assert_allclose(ours.numpy(), sklearn_ap(scores, targets), rtol=1e-5, atol=1e-6)


def test_average_precision_hand_checked() -> None:
    # Ranked: pos (P=1/1), neg, pos (P=2/3) -> AP = (1 + 2/3) / 2. Tie of a pos and a neg at the
    # top: one threshold admits both, P=1/2, then pos at P=2/3 -> AP = (1/2 + 2/3) / 2.
    scores = torch.tensor([[0.9, 0.8], [0.5, 0.8], [0.4, 0.3], [0.1, 0.1]])
    targets = torch.tensor([[1, 1], [0, 0], [1, 1], [0, 0]])
    torch.testing.assert_close(
        average_precision_per_class(scores, targets), torch.tensor([5 / 6, 7 / 12])
    )


def test_classes_without_positives_are_reported_not_averaged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scores, targets = random_multilabel(100, 6, seed=3)
    targets[:, [1, 4]] = 0
    per_class = average_precision_per_class(scores, targets)
    assert per_class[[1, 4]].isnan().all() and not per_class[[0, 2, 3, 5]].isnan().any()
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.training.metrics"):
        value = mean_over_classes_with_positives(per_class)
    assert value.item() == pytest.approx(np.mean(sklearn_ap(scores, targets)), rel=1e-5)
    assert "4 of 6 classes" in caplog.text and "[1, 4]" in caplog.text


def test_weighted_average_precision_equals_repeated_rows() -> None:
    # A row with weight w counts as w identical samples; weight 0 as none.
    scores, targets = random_multilabel(40, 3, seed=9)
    weights = torch.randint(0, 4, (40, 1)).expand(40, 3)
    repeated = torch.repeat_interleave(torch.arange(40), weights[:, 0])
    torch.testing.assert_close(average_precision_per_class(scores, targets, weights),
                               average_precision_per_class(scores[repeated], targets[repeated]))


def test_histogram_ap_is_exact_for_scores_rounded_to_their_bin() -> None:
    generator = torch.Generator().manual_seed(10)
    targets = (torch.rand(2000, 4, generator=generator) < 0.2).int()
    logits = 3 * torch.randn(2000, 4, generator=generator) + 2.5 * targets
    num_bins = 64  # coarse, so that bins hold ties
    table = histogram_table(score_histogram(logits, targets, num_bins))
    binned = average_precision_per_class(*table)
    width = 32 / num_bins
    rounded = ((logits.clamp(-16, 16) + 16) / width).floor().clamp(max=num_bins - 1)
    torch.testing.assert_close(binned, average_precision_per_class(rounded, targets))
    # Only ties inside a bin differ from the exact AP: less than the bin width (in logit) here.
    exact = average_precision_per_class(logits, targets)
    for num_bins, largest_difference in ((64, 0.02), (2**10, 2e-3), (2**16, 5e-5)):
        binned = average_precision_per_class(*histogram_table(score_histogram(logits, targets, num_bins)))
        assert (binned - exact).abs().max() < min(largest_difference, 32 / num_bins), num_bins


def test_single_label_scores_hand_checked() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=generator)
    labels = torch.randint(0, 8, (64,), generator=generator)
    confusion = confusion_counts(logits[:30], labels[:30]) + confusion_counts(logits[30:], labels[30:])
    hits = top_k_hits(logits[:30], labels[:30], 5) + top_k_hits(logits[30:], labels[30:], 5)
    results = single_label_scores(confusion, hits)

    predicted = logits.argmax(1)
    in_top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1)
    per_class = [(predicted[labels == k] == k).float().mean().item() for k in range(8)]
    assert results["top1"].item() == pytest.approx((predicted == labels).float().mean().item())
    assert results["top5"].item() == pytest.approx(in_top5.float().mean().item())
    np.testing.assert_allclose(results["per_class_accuracy"].numpy(), per_class, rtol=1e-6)
    assert results["macro_accuracy"].item() == pytest.approx(
        balanced_accuracy_score(labels.numpy(), predicted.numpy())
    )
    np.testing.assert_array_equal(confusion.numpy(), confusion_matrix(labels.numpy(), predicted.numpy()))
    assert "top5" not in single_label_scores(confusion)


def test_macro_accuracy_leaves_out_only_classes_neither_present_nor_predicted() -> None:
    # Class 2 is predicted but never true: accuracy 0, counted. Class 3 is neither: left out.
    confusion = torch.tensor([[3, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    results = single_label_scores(confusion)
    assert results["per_class_accuracy"].tolist() == pytest.approx([0.75, 0.5, 0.0, 0.0])
    assert results["macro_accuracy"].item() == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert results["top1"].item() == pytest.approx(4 / 6)
    assert single_label_scores(torch.zeros(3, 3, dtype=torch.long))["top1"].item() == 0.0


def test_threshold_metrics_match_sklearn() -> None:
    scores, targets = random_multilabel(200, 7, seed=6, decimals=3)
    targets[:, 6] = 0
    scores[:, 6] = 0.1  # a class with neither positives nor predictions: 0 in the macro averages
    counts = threshold_counts(scores[:120], targets[:120], 0.4) + threshold_counts(scores[120:], targets[120:], 0.4)
    results = threshold_scores(counts)
    predicted = (scores > 0.4).int().numpy()
    truth = targets.numpy()
    for average in ("micro", "macro"):
        references = [("f1", f1_score), ("precision", precision_score), ("recall", recall_score)]
        for name, reference in references:
            expected = reference(truth, predicted, average=average, zero_division=0)
            assert results[f"{name}_{average}"].item() == pytest.approx(expected, rel=1e-5), name


def calibration_mismatch_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 scores everything high, class 1 everything low; each is separable on its own."""
    generator = torch.Generator().manual_seed(7)
    targets = (torch.rand(400, 3, generator=generator) < 0.4).int()
    noise = 0.08 * torch.rand(400, 3, generator=generator)
    scores = torch.empty(400, 3)
    scores[:, 0] = torch.where(targets[:, 0] == 1, 0.90, 0.62) + noise[:, 0]
    scores[:, 1] = torch.where(targets[:, 1] == 1, 0.30, 0.05) + noise[:, 1]
    scores[:, 2] = torch.where(targets[:, 2] == 1, 0.70, 0.20) + noise[:, 2]
    return scores, targets


def test_tune_thresholds_fixes_miscalibrated_classes() -> None:
    scores, targets = calibration_mismatch_case()
    tuned = tune_thresholds(scores, targets)
    assert tuned.f1_after == pytest.approx(1.0)
    assert tuned.f1_before < 0.75  # 0.5 predicts every class-0 sample and no class-1 sample
    assert tuned.f1_before <= tuned.f1_global < tuned.f1_after
    assert 0.70 < tuned.per_class[0] < 0.90 and 0.13 < tuned.per_class[1] < 0.30

    predicted = (scores > tuned.per_class).int().numpy()
    assert f1_score(targets.numpy(), predicted, average="macro") == pytest.approx(tuned.f1_after)
    at_global = (scores > tuned.global_threshold).int().numpy()
    assert f1_score(targets.numpy(), at_global, average="macro") == pytest.approx(tuned.f1_global, rel=1e-5)


def test_tuned_per_class_threshold_is_the_exact_optimum() -> None:
    scores, targets = random_multilabel(60, 5, seed=8, decimals=1)
    tuned = tune_thresholds(scores, targets)
    for k in range(5):
        distinct = torch.unique(scores[:, k])
        cuts = torch.cat([distinct[:1] - 1, (distinct[1:] + distinct[:-1]) / 2])
        brute_force = max(
            f1_score(targets[:, k].numpy(), (scores[:, k] > cut).numpy(), zero_division=0)
            for cut in cuts
        )
        ours = f1_score(targets[:, k].numpy(), (scores[:, k] > tuned.per_class[k]).numpy())
        assert ours == pytest.approx(brute_force)
    assert tuned.f1_after >= tuned.f1_global >= tuned.f1_before


def test_class_without_positives_uses_global_threshold() -> None:
    scores, targets = calibration_mismatch_case()
    targets[:, 2] = 0
    tuned = tune_thresholds(scores, targets)
    assert tuned.per_class[2].item() == tuned.global_threshold
    assert tuned.f1_after == pytest.approx(1.0)  # macro over classes 0 and 1 only


def test_thresholds_survive_a_weights_only_checkpoint(tmp_path) -> None:
    tuned = tune_thresholds(*calibration_mismatch_case())
    torch.save({"thresholds": tuned.to_dict()}, tmp_path / "ckpt.pt")
    loaded = Thresholds.from_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["thresholds"])
    assert loaded.global_threshold == tuned.global_threshold and loaded.f1_after == tuned.f1_after
    torch.testing.assert_close(loaded.per_class, tuned.per_class)


def test_weighted_tuning_scores_f1_as_repeated_rows() -> None:
    scores, targets = random_multilabel(80, 4, seed=11, decimals=2)
    weights = torch.randint(1, 4, (80, 1)).expand(80, 4)
    repeated = torch.repeat_interleave(torch.arange(80), weights[:, 0])
    weighted = tune_thresholds(scores, targets, weights=weights)
    plain = tune_thresholds(scores[repeated], targets[repeated])
    torch.testing.assert_close(weighted.per_class, plain.per_class)
    assert (weighted.f1_before, weighted.f1_global, weighted.f1_after) == pytest.approx(
        (plain.f1_before, plain.f1_global, plain.f1_after))


def test_bad_inputs_raise_value_errors() -> None:
    expected = r"Expected targets of shape \[N, K\] matching scores \[4, 3\], but got \[4\]"
    with pytest.raises(ValueError, match=expected):
        average_precision_per_class(torch.rand(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match=r"Expected weights of shape \[N, K\] matching scores \[4, 3\]"):
        average_precision_per_class(torch.rand(4, 3), torch.ones(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="at least one class with a positive"):
        tune_thresholds(torch.rand(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"Expected weights of shape \[N, K\] matching scores \[4, 3\]"):
        tune_thresholds(torch.rand(4, 3), torch.ones(4, 3), weights=torch.ones(4))
