"""The deterministic holdout (``data/splits.py``): stratified by class or tag, never empty, every
class or tag kept in training, independent of listing order; and the capped name lists."""

from __future__ import annotations

import numpy as np
import pytest

from tresnet_ft.data.splits import describe_names, hash_unit, holdout_mask
from tresnet_ft.errors import UserError


def _per_class_reference(keys, targets, fraction, seed):
    """The single-label rule as it always was: each class with n >= 2 items sends its
    round(fraction * n) lowest-ranked items (at least one, never all) to validation."""
    ranks = np.array([hash_unit(key, seed) for key in keys])
    mask = np.zeros(len(keys), dtype=bool)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        if len(members) >= 2:
            take = min(max(1, round(fraction * len(members))), len(members) - 1)
            mask[members[np.argsort(ranks[members], kind="stable")[:take]]] = True
    return mask


def test_single_label_holdout_is_the_per_class_rule_and_ignores_listing_order():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 7, size=300)
    targets[:3] = 7  # a class of three
    targets[3] = 8  # a class of one stays in training
    keys = [f"img/{i}.jpg" for i in range(300)]
    mask = holdout_mask(keys, targets, 0.2, seed=3)
    np.testing.assert_array_equal(mask, _per_class_reference(keys, targets, 0.2, 3))
    assert not mask[3] and mask[:3].sum() == 1
    order = rng.permutation(300)
    shuffled = holdout_mask([keys[i] for i in order], targets[order], 0.2, seed=3)
    assert {keys[i] for i in order[shuffled]} == {keys[i] for i in np.flatnonzero(mask)}


@pytest.mark.parametrize("seed", range(40))
def test_a_small_multi_label_holdout_is_never_empty_and_keeps_every_tag_in_training(seed):
    # Six items, four tags: per-item coin flips at 10 % leave validation empty for most seeds.
    targets = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    mask = holdout_mask([f"k{i}" for i in range(6)], targets, 0.1, seed)
    assert 1 <= mask.sum() <= 5
    assert (targets[~mask].sum(axis=0) >= 1).all()  # tag 3 (one item) included


@pytest.mark.parametrize("seed", range(10))
def test_a_rare_tag_gets_validation_items_beside_a_common_one(seed):
    targets = np.zeros((60, 3), dtype=np.float32)
    targets[:, 0] = 1  # on every item
    targets[:4, 1] = 1  # rare: 4 items
    targets[10:30, 2] = 1
    mask = holdout_mask([f"k{i}" for i in range(60)], targets, 0.25, seed)
    in_val = targets[mask].sum(axis=0)
    assert in_val[1] == 1  # round(0.25 * 4) of the rare tag
    assert in_val[2] == 5 and 10 <= mask.sum() <= 20


def test_too_few_items_or_only_unique_classes_is_one_clear_error():
    with pytest.raises(UserError, match=r"at least 2 images in photos/ to hold out a validation split, but got 1"):
        holdout_mask(["a"], np.array([0]), 0.1, source="photos/")
    with pytest.raises(UserError, match=r"each of its 3 images has a class or tag no other image has"):
        holdout_mask(["a", "b", "c"], np.array([0, 1, 2]), 0.1, source="photos/")
    # Multi-label rows without tags can always go to validation.
    mask = holdout_mask(["a", "b", "c"], np.array([[1, 0], [0, 1], [0, 0]]), 0.1)
    assert mask.tolist() == [False, False, True]


def test_name_lists_are_cut_after_ten():
    assert describe_names(["zebra"]) == "['zebra']"
    names = [f"c{i}" for i in range(25)]
    assert describe_names(names) == "['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', ...] and 15 more"
