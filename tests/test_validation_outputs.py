"""The worst predictions: kept across batches in fixed memory, merged across processes, captions."""
from __future__ import annotations

import pytest
import torch

from tresnet_ft.training.validation_outputs import WorstPredictions, describe_worst, keep_worst, merge_worst


def batches(num_batches: int, batch_size: int, num_classes: int, multi_label: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(num_batches):
        logits = torch.randn(batch_size, num_classes, generator=generator)
        images = torch.rand(batch_size, 3, 6, 6, generator=generator)
        if multi_label:
            targets = (torch.rand(batch_size, num_classes, generator=generator) < 0.4).float()
            yield logits.sigmoid(), targets, images
        else:
            targets = torch.randint(0, num_classes, (batch_size,), generator=generator)
            yield logits.softmax(dim=1), targets, images


def keep_over(data, num_worst: int) -> WorstPredictions:
    kept = None
    for probs, targets, images in data:
        kept = keep_worst(kept, probs, targets, images, num_worst)
    return kept


def test_single_label_worst_images_over_batches():
    data = list(batches(4, 7, 3, multi_label=False))
    worst = keep_over(data, 5)
    probs, targets, images = (torch.cat(part) for part in zip(*data))

    p_true = probs[torch.arange(28), targets]
    worst_five = p_true.argsort()[:5]
    assert torch.allclose(worst.badness, 1 - p_true[worst_five])
    assert torch.equal(worst.targets, targets[worst_five])
    assert torch.equal(worst.probs, probs[worst_five])
    assert worst.images.dtype == torch.uint8
    assert torch.equal(worst.images, (images[worst_five] * 255).round().to(torch.uint8))


def test_multi_label_worst_are_ranked_by_mean_binary_cross_entropy():
    data = list(batches(3, 5, 4, multi_label=True))
    worst = keep_over(data, 3)
    probs, targets, _ = (torch.cat(part) for part in zip(*data))
    bce = torch.nn.functional.binary_cross_entropy(probs, targets, reduction="none").mean(1)
    assert torch.allclose(worst.badness, bce.sort(descending=True).values[:3])
    assert torch.equal(worst.targets, targets[bce.argsort(descending=True)[:3]])


def test_equally_bad_images_keep_the_earliest_and_parts_merge_in_order():
    probs = torch.tensor([[0.5, 0.5]] * 4)  # every image equally bad
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    kept = keep_worst(None, probs[:2], torch.tensor([0, 1]), images[:2], 3)
    kept = keep_worst(kept, probs[2:], torch.tensor([0, 1]), images[2:], 3)
    assert kept.images[:, 0, 0, 0].tolist() == [0, 1, 2]
    other = WorstPredictions(images[:1], torch.tensor([[0.9, 0.1]]), torch.tensor([1]), torch.tensor([0.9]))
    merged = merge_worst([kept, other], 2)
    assert merged.badness.tolist() == pytest.approx([0.9, 0.5]) and merged.targets.tolist() == [1, 0]


def test_images_of_another_size_are_rejected():
    kept = keep_worst(None, torch.rand(2, 3), torch.tensor([0, 1]), torch.rand(2, 3, 4, 4), 2)
    with pytest.raises(ValueError, match=r"images of one size \[3, H, W\] across batches, but got \[3, 4, 4\] then \[3, 5, 5\]"):
        keep_worst(kept, torch.rand(2, 3), torch.tensor([0, 1]), torch.rand(2, 3, 5, 5), 2)


def test_captions_single_label():
    worst = WorstPredictions(
        images=torch.zeros(2, 3, 2, 2, dtype=torch.uint8),
        probs=torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]),
        targets=torch.tensor([2, 0]),
        badness=torch.tensor([0.8, 0.4]),
    )
    true, predicted, confidences, correct = describe_worst(worst, ["cat", "dog", "bird"])
    assert (true, predicted, correct) == (["bird", "cat"], ["dog", "cat"], [False, True])
    assert confidences == pytest.approx([0.7, 0.6])


def test_captions_multi_label_order_tags_by_score_and_compare_sets():
    classes = ["a", "b", "c", "d", "e"]
    worst = WorstPredictions(
        images=torch.zeros(3, 3, 2, 2, dtype=torch.uint8),
        probs=torch.tensor([[0.6, 0.9, 0.1, 0.1, 0.1],
                            [0.9, 0.8, 0.7, 0.6, 0.55],
                            [0.1, 0.2, 0.3, 0.1, 0.1]]),
        targets=torch.tensor([[1.0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0]]),
        badness=torch.zeros(3),
    )
    true, predicted, confidences, correct = describe_worst(worst, classes)
    assert true == ["a, b", "a", "d"]
    assert predicted == ["b, a", "a, b, c +2", "(none)"]
    assert correct == [True, False, False]
    assert confidences == pytest.approx([0.9, 0.9, 0.3])
