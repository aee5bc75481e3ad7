"""Metrics and threshold tuning, checked against scikit-learn and hand-computed cases."""
from __future__ import annotations

import logging
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)
from torchmetrics.classification import MultilabelF1Score

from tresnet_ft.training.metrics import (
    MultilabelMeanAveragePrecision,
    Thresholds,
    average_precision_per_class,
    mean_average_precision,
    multilabel_metrics,
    single_label_metrics,
    tune_thresholds,
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
        value = mean_average_precision(scores, targets)
    assert value.item() == pytest.approx(np.mean(sklearn_ap(scores, targets)), rel=1e-5)
    assert "4 of 6 classes" in caplog.text and "[1, 4]" in caplog.text

    metric = MultilabelMeanAveragePrecision(num_classes=6)
    metric.update(scores, targets)
    assert metric.compute().item() == pytest.approx(value.item())
    assert metric.classes_without_positives == [1, 4]


def test_map_metric_accumulates_batches_and_resets() -> None:
    scores, targets = random_multilabel(90, 5, seed=4)
    metric = MultilabelMeanAveragePrecision(num_classes=5)
    for start in range(0, 90, 25):  # uneven last batch
        metric.update(scores[start : start + 25], targets[start : start + 25])
    assert metric.compute().item() == pytest.approx(np.mean(sklearn_ap(scores, targets)), rel=1e-5)
    metric.reset()
    metric.update(scores[:40], targets[:40])
    expected = np.mean(sklearn_ap(scores[:40], targets[:40]))
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    per_class = MultilabelMeanAveragePrecision(num_classes=5, average="none")
    per_class.update(scores, targets)
    np.testing.assert_allclose(per_class.compute().numpy(), sklearn_ap(scores, targets), rtol=1e-5)


def sharded_case() -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    scores, targets = random_multilabel(47, 4, seed=5)
    targets[:, 3] = 0
    targets[40, 3] = 1  # class 3's only positive sits on the second rank
    return scores, targets, [slice(0, 30), slice(30, 47)]  # uneven, like a last partial batch


def test_map_metric_states_are_concatenated_on_sync() -> None:
    # Two ranks simulated in one process: torchmetrics hands each state to dist_sync_fn (an
    # all-gather) in the order they were added; this one returns the other rank's state as well.
    scores, targets, shards = sharded_case()
    other_rank = MultilabelMeanAveragePrecision(num_classes=4)
    other_rank.update(scores[shards[1]], targets[shards[1]])
    other_states = iter([other_rank.scores[0], other_rank.targets[0]])

    def all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        return [tensor, next(other_states)]

    metric = MultilabelMeanAveragePrecision(
        num_classes=4, dist_sync_fn=all_gather, distributed_available_fn=lambda: True
    )
    metric.update(scores[shards[0]], targets[shards[0]])
    assert metric.compute().item() == pytest.approx(np.mean(sklearn_ap(scores, targets)), rel=1e-5)
    assert metric.classes_without_positives == []


def compute_map_on_shard(rank: int, port: int, out_dir: str) -> None:
    """One DDP rank: update with its own shard only, then save the synchronised mAP."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    scores, targets, shards = sharded_case()
    metric = MultilabelMeanAveragePrecision(num_classes=4)
    metric.update(scores[shards[rank]], targets[shards[rank]])
    torch.save(metric.compute(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes re-import torch and torchmetrics: ~10 s on 2 cores
def test_map_metric_synchronises_across_real_processes(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(compute_map_on_shard, args=(port, str(tmp_path)), nprocs=2)
    scores, targets, _ = sharded_case()
    expected = np.mean(sklearn_ap(scores, targets))
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt", weights_only=True).item() == pytest.approx(expected, rel=1e-5)


def test_single_label_metrics_hand_checked() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 8, generator=generator)
    labels = torch.randint(0, 8, (64,), generator=generator)
    collection = single_label_metrics(8)
    collection.update(logits[:30], labels[:30])
    collection.update(logits[30:], labels[30:])
    results = collection.compute()

    predicted = logits.argmax(1)
    in_top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1)
    per_class = [(predicted[labels == k] == k).float().mean().item() for k in range(8)]
    assert results["top1"].item() == pytest.approx((predicted == labels).float().mean().item())
    assert results["top5"].item() == pytest.approx(in_top5.float().mean().item())
    np.testing.assert_allclose(results["per_class_accuracy"].numpy(), per_class, rtol=1e-6)
    assert results["macro_accuracy"].item() == pytest.approx(
        balanced_accuracy_score(labels.numpy(), predicted.numpy())
    )
    np.testing.assert_array_equal(
        results["confusion_matrix"].numpy(), confusion_matrix(labels.numpy(), predicted.numpy())
    )
    assert "top5" not in single_label_metrics(5).keys()


def test_multilabel_threshold_metrics_match_sklearn() -> None:
    scores, targets = random_multilabel(200, 7, seed=6, decimals=3)
    collection = multilabel_metrics(7, threshold=0.4)
    collection.update(scores, targets)
    results = collection.compute()
    predicted = (scores > 0.4).int().numpy()
    truth = targets.numpy()
    for average in ("micro", "macro"):
        references = [("f1", f1_score), ("precision", precision_score), ("recall", recall_score)]
        for name, reference in references:
            expected = reference(truth, predicted, average=average, zero_division=0)
            assert results[f"{name}_{average}"].item() == pytest.approx(expected, rel=1e-5), name
    assert results["mAP"].item() == pytest.approx(np.mean(sklearn_ap(scores, targets)), rel=1e-5)
    assert results["per_class_ap"].shape == (7,)


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

    predicted = tuned.predict(scores).int().numpy()
    assert f1_score(targets.numpy(), predicted, average="macro") == pytest.approx(tuned.f1_after)
    at_global = MultilabelF1Score(3, threshold=tuned.global_threshold, average="macro")
    assert at_global(scores, targets).item() == pytest.approx(tuned.f1_global, rel=1e-5)


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


def test_bad_inputs_raise_value_errors() -> None:
    expected = r"Expected targets of shape \[N, K\] matching scores \[4, 3\], but got \[4\]"
    with pytest.raises(ValueError, match=expected):
        average_precision_per_class(torch.rand(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match=r"Expected scores of shape \[N, 3\], but got \[4, 2\]"):
        MultilabelMeanAveragePrecision(3).update(torch.rand(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="at least one class with a positive"):
        tune_thresholds(torch.rand(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"Expected scores of shape \[N, 3\]"):
        tune_thresholds(*calibration_mismatch_case()).predict(torch.rand(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        single_label_metrics(1)
    with pytest.raises(ValueError, match=r"threshold to be a probability"):
        multilabel_metrics(3, threshold=2.0)
