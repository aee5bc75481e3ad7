"""EvaluationAccumulator: metrics over batches, bounded memory, and one synchronisation per pass.

Processes are simulated by threads that meet in each collective (fast), and once by real gloo
processes (slow).
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score

from benchmarks.host_syncs import HostSyncCounter
from tresnet_ft.classifier.thresholds import tune_thresholds
from tresnet_ft.training.evaluation import EvaluationAccumulator, TorchDistributed


def multilabel_data(num_samples: int, num_classes: int, seed: int, decimals: int = 1):
    """Probabilities with many ties (rounded) that correlate with the targets, and images."""
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(num_samples, num_classes, generator=generator) < 0.3).float()
    noise = torch.rand(num_samples, num_classes, generator=generator)
    probs = (torch.round((0.35 * targets + 0.6 * noise + 0.02) * 10**decimals) / 10**decimals)
    return probs, targets, torch.rand(num_samples, 3, 4, 4, generator=generator)


def single_label_data(num_samples: int, num_classes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(num_samples, num_classes, generator=generator).softmax(dim=1)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return probs, labels, torch.rand(num_samples, 3, 4, 4, generator=generator)


def sklearn_ap(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return [average_precision_score(targets[:, k].numpy(), scores[:, k].numpy())
            for k in range(scores.shape[1]) if targets[:, k].any()]


def feed(accumulator: EvaluationAccumulator, data, batch_size: int = 25) -> EvaluationAccumulator:
    for start in range(0, len(data[0]), batch_size):  # an uneven last batch
        accumulator.update(*(part[start:start + batch_size] for part in data))
    return accumulator


def test_single_label_pass_matches_sklearn_and_keeps_the_worst_images():
    probs, labels, images = data = single_label_data(64, 8, seed=0)
    result = feed(EvaluationAccumulator("single_label", 8, num_worst=4), data).compute()
    predicted = probs.argmax(1)
    in_top5 = (probs.topk(5, dim=1).indices == labels[:, None]).any(1)
    assert result.metrics["top1"] == pytest.approx((predicted == labels).float().mean().item())
    assert result.metrics["top5"] == pytest.approx(in_top5.float().mean().item())
    assert result.metrics["macro_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    np.testing.assert_array_equal(result.confusion_matrix.numpy(), confusion_matrix(labels, predicted))
    assert result.num_samples == 64 and result.per_class_accuracy.shape == (8,)
    p_true = probs[torch.arange(64), labels]
    assert torch.allclose(result.worst.badness, 1 - p_true.sort().values[:4])

    five = feed(EvaluationAccumulator("single_label", 5), single_label_data(20, 5, seed=1)).compute()
    assert "top5" not in five.metrics and set(five.metrics) == {"top1", "macro_accuracy"}


def test_multi_label_pass_matches_sklearn_and_resets(caplog):
    probs, targets, _ = data = multilabel_data(90, 5, seed=4)
    targets[:, 3] = 0
    accumulator = EvaluationAccumulator("multi_label", 5, threshold=0.4)
    with caplog.at_level(logging.WARNING, logger="tresnet_ft.training.metrics"):
        result = feed(accumulator, data).compute()
    assert result.metrics["mAP"] == pytest.approx(np.mean(sklearn_ap(probs, targets)), rel=1e-5)
    ap = result.per_class_ap
    np.testing.assert_allclose(ap[[0, 1, 2, 4]].numpy(), sklearn_ap(probs, targets), rtol=1e-5)
    assert result.classes_without_positives == [3] and "4 of 5 classes" in caplog.text
    expected_f1 = f1_score(targets.numpy(), (probs > 0.4).int().numpy(), average="macro", zero_division=0)
    assert result.metrics["f1_macro"] == pytest.approx(expected_f1, rel=1e-5)
    # The kept scores (float16 logits) and targets are what thresholds and curves read.
    assert torch.allclose(result.scores, probs, atol=1e-3) and torch.equal(result.targets, targets.to(torch.uint8))
    assert result.weights is None

    again = feed(accumulator, tuple(part[:40] for part in data)).compute()  # compute() started a new pass
    assert again.num_samples == 40
    assert again.metrics["mAP"] == pytest.approx(np.mean(sklearn_ap(probs[:40], targets[:40])), rel=1e-5)


def test_beyond_the_budget_histograms_keep_memory_fixed_and_ap_close():
    generator = torch.Generator().manual_seed(5)
    targets = (torch.rand(3000, 6, generator=generator) < 0.2).float()
    probs = (2 * torch.randn(3000, 6, generator=generator) + 2 * targets - 1).sigmoid()
    budget = 500 * 6 * 3  # the scores of 500 images
    bounded = EvaluationAccumulator("multi_label", 6, max_score_bytes=budget)
    exact = EvaluationAccumulator("multi_label", 6)
    held = []
    for start in range(0, 3000, 250):
        batch = probs[start:start + 250], targets[start:start + 250]
        bounded.update(*batch)
        exact.update(*batch)
        held.append(bounded.held_bytes)
    # 250 images' scores, then 500, then histograms: fixed from the third batch on.
    counts = 3 * 6 * 8
    assert held[:2] == [counts + 250 * 6 * 3, counts + 500 * 6 * 3]
    assert bounded.num_bins == 1024 and held[2:] == [counts + 2 * 6 * 1024 * 4] * 10
    result, reference = bounded.compute(), exact.compute()
    assert result.weights is not None and result.scores.shape == (2 * 1024, 6)
    # Bins 1/32 logit wide: AP moves only where a positive and a negative share one.
    assert (result.per_class_ap - reference.per_class_ap).abs().max() < 2e-3
    assert result.metrics["f1_macro"] == reference.metrics["f1_macro"]  # counted exactly at 0.5
    tuned = tune_thresholds(result.scores, result.targets, weights=result.weights)
    assert tuned.f1_after == pytest.approx(tune_thresholds(reference.scores, reference.targets).f1_after, abs=5e-3)


def test_updates_never_read_the_device_from_the_host():
    # On a GPU a read (.item(), .cpu(), a data-dependent shape) would stall every batch; the
    # histogram switch (budget: 30 images) and the worst images included.
    single, multi = single_label_data(90, 8, seed=8), multilabel_data(90, 6, seed=8)
    accumulators = [EvaluationAccumulator("single_label", 8, num_worst=4),
                    EvaluationAccumulator("multi_label", 6, num_worst=4, max_score_bytes=30 * 6 * 3)]
    with HostSyncCounter() as syncs:
        for accumulator, data in zip(accumulators, (single, multi)):
            feed(accumulator, data, batch_size=20)
    assert syncs.total == 0, syncs.counts
    assert accumulators[1]._histogram is not None


@pytest.mark.parametrize(
    ("task", "probs", "targets", "images", "message"),
    [
        ("single_label", torch.rand(4), torch.zeros(4, dtype=torch.long), None,
         r"probs of shape \[B, 3\], but got \[4\]"),
        ("single_label", torch.rand(4, 3), torch.zeros(4, 3), None,
         r"single_label targets of shape \[4\] .* but got \[4, 3\]"),
        ("single_label", torch.rand(4, 3), torch.zeros(4), None,
         "integer class labels .* but got torch.float32"),
        ("multi_label", torch.rand(4, 3), torch.zeros(4, dtype=torch.long), None,
         r"multi_label targets of shape \[4, 3\] .* but got \[4\]"),
        ("multi_label", torch.rand(4, 3), torch.zeros(4, 3), torch.zeros(4, 1, 8, 8),
         r"images of shape \[4, 3, H, W\], but got \[4, 1, 8, 8\]"),
        ("multi_label", torch.rand(2, 4), torch.zeros(2, 4), None, r"probs of shape \[B, 3\], but got \[2, 4\]"),
    ],
)
def test_bad_batches_are_rejected_with_expected_and_received(task, probs, targets, images, message):
    with pytest.raises(ValueError, match=message):
        EvaluationAccumulator(task, 3).update(probs, targets, images)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="num_classes to be an integer of at least 2, but got 1"):
        EvaluationAccumulator("single_label", 1)
    with pytest.raises(ValueError, match=r"threshold to be a probability in \[0, 1\], but got 2.0"):
        EvaluationAccumulator("multi_label", 3, threshold=2.0)
    with pytest.raises(ValueError, match="task to be one of"):
        EvaluationAccumulator("regression", 3)


# -- several processes --------------------------------------------------------------------------


class ThreadWorld:
    """Processes simulated by threads: each collective waits for every member, as the real ones do."""

    def __init__(self, size: int) -> None:
        self.size, self.barrier = size, threading.Barrier(size, timeout=30)
        self.slots: list[torch.Tensor | None] = [None] * size
        self.calls: collections.Counter[str] = collections.Counter()

    def member(self, rank: int) -> ThreadMember:
        return ThreadMember(self, rank)


class ThreadMember:
    def __init__(self, world: ThreadWorld, rank: int) -> None:
        self.world, self.rank, self.world_size = world, rank, world.size

    def all_reduce(self, tensor: torch.Tensor) -> None:
        tensor.copy_(torch.stack(self._exchange("all_reduce", tensor)).sum(0))

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self._exchange("all_gather", tensor)

    def _exchange(self, name: str, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.rank == 0:
            self.world.calls[name] += 1
        self.world.slots[self.rank] = tensor.clone()
        self.world.barrier.wait()
        slots = list(self.world.slots)
        assert len({slot.shape for slot in slots}) == 1, "collectives need the same shape on every rank"
        self.world.barrier.wait()  # nobody overwrites a slot before all have read it
        return slots


def sharded_results(task: str, data, shards: list[slice], **options):
    world = ThreadWorld(len(shards))

    def run(rank: int):
        accumulator = EvaluationAccumulator(task, data[0].shape[1], **options)
        feed(accumulator, tuple(part[shards[rank]] for part in data), batch_size=7)
        return accumulator.compute(collectives=world.member(rank))

    with ThreadPoolExecutor(len(shards)) as pool:
        results = list(pool.map(run, range(len(shards))))
    reference = feed(EvaluationAccumulator(task, data[0].shape[1], **options), data, batch_size=7).compute()
    return results, reference, dict(world.calls)


def assert_same_result(result, reference) -> None:
    assert result.num_samples == reference.num_samples and result.metrics.keys() == reference.metrics.keys()
    for name, value in reference.metrics.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    for name in ("confusion_matrix", "per_class_ap", "scores", "targets", "weights"):
        expected = getattr(reference, name)
        if expected is not None:
            torch.testing.assert_close(getattr(result, name), expected, equal_nan=True, msg=name)
    for name in ("images", "probs", "targets", "badness"):
        torch.testing.assert_close(getattr(result.worst, name), getattr(reference.worst, name), msg=name)


SHARDS = [slice(0, 30), slice(30, 47)]  # uneven, like a last partial batch


def test_single_label_is_gathered_in_two_collectives_and_equals_one_process():
    results, reference, calls = sharded_results("single_label", single_label_data(47, 7, seed=6), SHARDS,
                                                num_worst=5)
    assert calls == {"all_reduce": 1, "all_gather": 1}
    for result in results:  # every rank holds the whole pass
        assert_same_result(result, reference)


@pytest.mark.parametrize(("budget", "expected_calls"), [
    (None, {"all_reduce": 1, "all_gather": 1}),
    (400, {"all_reduce": 2, "all_gather": 1}),  # fits each rank (at most 360 bytes), not both (564)
    (10 * 4 * 3, {"all_reduce": 2, "all_gather": 1}),  # over the budget on each rank already
])
def test_multi_label_is_gathered_in_at_most_three_collectives(budget, expected_calls):
    probs, targets, images = multilabel_data(47, 4, seed=5)
    targets[:, 3] = 0
    targets[40, 3] = 1  # class 3's only positive sits on the second rank
    options = {"num_worst": 3} if budget is None else {"num_worst": 3, "max_score_bytes": budget}
    results, reference, calls = sharded_results("multi_label", (probs, targets, images), SHARDS, **options)
    assert calls == expected_calls
    assert (reference.weights is None) == (budget is None)
    for result in results:
        assert_same_result(result, reference)
        assert result.classes_without_positives == []


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_a_process_without_batches_still_takes_part(task):
    data = single_label_data(10, 3, seed=7) if task == "single_label" else multilabel_data(10, 3, seed=7)
    results, reference, calls = sharded_results(task, data, [slice(0, 10), slice(10, 10)])
    assert calls == {"all_reduce": 1, "all_gather": 1}
    for result in results:
        assert_same_result(result, reference)


def test_a_pass_without_any_batch_gives_an_empty_result():
    world = ThreadWorld(2)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda rank: EvaluationAccumulator("multi_label", 3).compute(world.member(rank)),
                                range(2)))
    assert dict(world.calls) == {"all_reduce": 1}  # nothing to gather after the counts
    for result in results:
        assert result.num_samples == 0 and result.metrics == {} and result.scores.shape == (0, 3)


class CountingTorchDistributed(TorchDistributed):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.calls["all_reduce"] += 1
        super().all_reduce(tensor)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.calls["all_gather"] += 1
        return super().all_gather(tensor)


def evaluate_shard(rank: int, port: int, out_dir: str) -> None:
    """One gloo rank: its own shards of a single-label and a multi-label pass, gathered for real."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    saved = {}
    for task, data in (("single_label", single_label_data(47, 7, seed=6)), ("multi_label", multilabel_data(47, 4, 5))):
        for budget in (2**20, 10 * 4 * 3):
            collectives = CountingTorchDistributed()
            accumulator = EvaluationAccumulator(task, 7 if task == "single_label" else 4, num_worst=3,
                                                max_score_bytes=budget)
            feed(accumulator, tuple(part[SHARDS[rank]] for part in data), batch_size=7)
            saved[task, budget] = (accumulator.compute(collectives), dict(collectives.calls))
    torch.save(saved, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes re-import torch: ~10 s on 2 cores
def test_real_processes_gather_the_pass_once(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(evaluate_shard, args=(port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for (task, budget), (result, calls) in saved.items():
            data = single_label_data(47, 7, seed=6) if task == "single_label" else multilabel_data(47, 4, 5)
            reference = feed(EvaluationAccumulator(task, data[0].shape[1], num_worst=3, max_score_bytes=budget),
                             data, batch_size=7).compute()
            assert_same_result(result, reference)
            histograms = task == "multi_label" and budget < 2**20
            assert calls == {"all_reduce": 1 + histograms, "all_gather": 1}, (task, budget)
