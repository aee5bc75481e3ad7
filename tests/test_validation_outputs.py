"""ValidationOutputs: what is kept from each batch, the worst images across batches, captions."""
from __future__ import annotations

import pytest
import torch

from tresnet_ft.training.validation_outputs import ValidationOutputs, WorstPredictions, describe_worst


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


def test_single_label_confusion_and_worst_images_over_batches():
    outputs = ValidationOutputs("single_label", num_worst=5)
    data = list(batches(4, 7, 3, multi_label=False))
    for probs, targets, images in data:
        outputs.add(probs, targets, images)
    probs, targets, images = (torch.cat(part) for part in zip(*data))

    expected = torch.zeros(3, 3, dtype=torch.long)
    for true, predicted in zip(targets.tolist(), probs.argmax(1).tolist()):
        expected[true, predicted] += 1
    assert torch.equal(outputs.confusion_matrix(), expected)
    assert outputs.num_samples == 28

    p_true = probs[torch.arange(28), targets]
    worst_five = p_true.argsort()[:5]
    worst = outputs.worst()
    assert torch.allclose(worst.badness, 1 - p_true[worst_five])
    assert torch.equal(worst.targets, targets[worst_five])
    assert torch.equal(worst.probs, probs[worst_five])
    assert worst.images.dtype == torch.uint8
    assert torch.equal(worst.images, (images[worst_five] * 255).round().to(torch.uint8))


def test_multi_label_keeps_float16_scores_uint8_targets_and_ranks_by_bce():
    outputs = ValidationOutputs("multi_label", num_worst=3)
    data = list(batches(3, 5, 4, multi_label=True))
    for probs, targets, images in data:
        outputs.add(probs, targets, images)
    probs, targets, _ = (torch.cat(part) for part in zip(*data))

    scores, kept_targets = outputs.scores_and_targets()
    assert outputs._chunks[0][0].dtype == torch.float16  # what is held between batches
    assert kept_targets.dtype == torch.uint8 and torch.equal(kept_targets, targets.to(torch.uint8))
    assert torch.allclose(scores, probs, atol=1e-3)

    bce = torch.nn.functional.binary_cross_entropy(probs, targets, reduction="none").mean(1)
    worst = outputs.worst()
    assert torch.allclose(worst.badness, bce.sort(descending=True).values[:3])
    assert torch.equal(worst.targets, targets[bce.argsort(descending=True)[:3]])


def test_without_images_no_worst_predictions_are_kept():
    outputs = ValidationOutputs("single_label")
    outputs.add(torch.tensor([[0.2, 0.8]]), torch.tensor([1]))
    assert outputs.worst() is None and outputs.confusion_matrix().sum() == 1


@pytest.mark.parametrize(
    ("task", "probs", "targets", "images", "message"),
    [
        ("single_label", torch.rand(4), torch.zeros(4, dtype=torch.long), None,
         r"probs of shape \[B, K\], but got \[4\]"),
        ("single_label", torch.rand(4, 3), torch.zeros(4, 3), None,
         r"single_label targets of shape \[4\] .* but got \[4, 3\]"),
        ("single_label", torch.rand(4, 3), torch.zeros(4), None,
         "integer class labels .* but got torch.float32"),
        ("multi_label", torch.rand(4, 3), torch.zeros(4, dtype=torch.long), None,
         r"multi_label targets of shape \[4, 3\] .* but got \[4\]"),
        ("multi_label", torch.rand(4, 3), torch.zeros(4, 3), torch.zeros(4, 1, 8, 8),
         r"images of shape \[4, 3, H, W\], but got \[4, 1, 8, 8\]"),
    ],
)
def test_bad_batches_are_rejected_with_expected_and_received(task, probs, targets, images, message):
    with pytest.raises(ValueError, match=message):
        ValidationOutputs(task).add(probs, targets, images)


def test_the_number_of_classes_must_stay_the_same():
    outputs = ValidationOutputs("multi_label")
    outputs.add(torch.rand(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"probs of shape \[B, 3\], but got \[2, 4\]"):
        outputs.add(torch.rand(2, 4), torch.zeros(2, 4))


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
