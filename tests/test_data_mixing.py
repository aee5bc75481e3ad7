"""Batch mixup/cutmix: pixels and soft targets agree on the mixing weight."""

from __future__ import annotations

import pytest
import torch

from tresnet_ft.data import BatchMixer


def _batch(b=6, k=10):
    torch.manual_seed(0)
    return torch.rand(b, 3, 16, 16), torch.arange(b) % k


def test_mixup_pixels_and_targets_share_one_weight():
    images, labels = _batch()
    mixed, soft = BatchMixer(10, mixup_alpha=0.8)(images, labels)
    lam = soft[0, labels[0]].item()  # labels are distinct, so this is the image's own weight
    assert torch.allclose(mixed, images * lam + images.flip(0) * (1 - lam), atol=1e-6)
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))
    assert soft.shape == (6, 10)


def test_cutmix_target_weight_equals_the_pasted_area():
    images, labels = _batch()
    torch.manual_seed(3)
    mixed, soft = BatchMixer(10, cutmix_alpha=1.0)(images, labels)
    from_partner = (mixed[0] == images.flip(0)[0]).all(dim=0)
    from_self = (mixed[0] == images[0]).all(dim=0)
    assert bool((from_partner | from_self).all())
    pasted = from_partner.float().mean().item()
    assert soft[0, labels[0]].item() == pytest.approx(1 - pasted, abs=1e-6)
    assert soft[0, labels.flip(0)[0]].item() == pytest.approx(pasted, abs=1e-6)


def test_disabled_mixer_returns_images_unchanged_and_one_hot_targets():
    images, labels = _batch()
    mixer = BatchMixer(10)
    assert not mixer.enabled
    out, soft = mixer(images, labels)
    assert out is images and torch.equal(soft.argmax(1), labels) and soft.sum() == 6


def test_multi_hot_targets_are_mixed_as_given():
    images = torch.rand(4, 3, 8, 8)
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    out, soft = BatchMixer(3, mixup_alpha=1.0)(images, targets)
    lam = ((out[0] - images[3]) / (images[0] - images[3])).mean().item()
    assert torch.allclose(soft, targets * lam + targets.flip(0) * (1 - lam), atol=1e-4)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        BatchMixer(0)
    with pytest.raises(ValueError, match="prob"):
        BatchMixer(3, mixup_alpha=1.0, prob=1.5)
    with pytest.raises(ValueError, match=r"targets \[B\] or \[B, 3\]"):
        BatchMixer(3, mixup_alpha=1.0)(torch.rand(2, 3, 4, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="float images"):
        BatchMixer(3, mixup_alpha=1.0)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2))
