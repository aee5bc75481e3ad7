"""Deterministic holdout splits that do not depend on file listing order.

Each item is ranked by a keyed hash of a stable key (its relative path, or its index for array
datasets), and every class (or tag) sends its lowest-ranked items to validation up to its quota.
Hashing instead of shuffling means the same files land in validation on every machine and Python
version, and adding files to one class leaves the other classes' holdout as it was.

The holdout is never empty: with at least 2 items, validation and training each get at least one,
and every class or tag keeps at least one training item (a model cannot learn what it never sees).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from ..errors import InvalidValueError

NAMES_SHOWN = 10  # how many names a message lists before "... and N more"


def hash_unit(key: str | int, seed: int) -> float:
    """A number in ``[0, 1)`` fixed by ``(seed, key)``."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def describe_names(names: Sequence[str], shown: int = NAMES_SHOWN) -> str:
    """``"['a', 'b']"``, or the first ``shown`` names then ``"... and N more"``: a message about
    thousands of class names stays one readable line."""
    names = list(names)
    if len(names) <= shown:
        return str(names)
    return f"{str(names[:shown])[:-1]}, ...] and {len(names) - shown} more"


def holdout_mask(
    keys: Sequence[str | int],
    targets: np.ndarray,
    fraction: float,
    seed: int = 0,
    source: str = "the dataset",
) -> np.ndarray:
    """Pick a validation subset; returns a bool mask ``[N]`` (True = validation).

    Every class (single-label) or tag (multi-label) with ``n >= 2`` items aims for
    ``round(fraction * n)`` of them in validation, at least one and never all; one with a single
    item keeps it in training. Multi-label items are placed rarest tag first (iterative
    stratification): an item goes where its rarest tag still needs items, so a rare tag is not
    swamped by a common one. Multi-label items without tags follow the same quota. Then validation
    and training are made non-empty.

    Args:
        keys: one stable key per item ``[N]``.
        targets: ``[N]`` class indices or ``[N, K]`` multi-hot.
        fraction: share of items for validation, in ``(0, 1)``.
        seed: changes which items are picked.
        source: what the items are, for messages (e.g. the folder or the table).

    Raises:
        ValueError: fewer than 2 items, or no item can go to validation without taking the last
            training item of its class or tag.

    Example:
        >>> int(holdout_mask(["a.jpg", "b.jpg", "c.jpg"], np.array([0, 0, 1]), 0.1).sum())
        1
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidValueError(f"Expected a holdout fraction in (0, 1), but got {fraction}.")
    if len(keys) != len(targets):
        raise InvalidValueError(
            f"Expected one key per target, but got {len(keys)} keys and {len(targets)} targets."
        )
    if len(keys) < 2:
        raise InvalidValueError(
            f"Expected at least 2 images in {source} to hold out a validation split, but got "
            f"{len(keys)}. Fix: add images, or give validation images of your own (a val/ folder, "
            "or a 'split' column in a table)."
        )
    ranks = np.array([hash_unit(key, seed) for key in keys], dtype=np.float64)
    groups, movable = _groups(np.asarray(targets))
    mask = _fill_quotas(groups, ranks, fraction)
    for members in groups:  # a tag whose items all went to validation by rarer tags comes back
        if len(members) and mask[members].all():
            mask[members[np.argmax(ranks[members])]] = False
    if not mask.any():
        mask[_lowest_ranked(movable, ranks, source)] = True
    if mask.all():  # only items without tags, and a quota that took them all
        mask[np.argmax(ranks)] = False
    return mask


def _groups(targets: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The items of each class or tag ``[n_k]``, and which items ``[N]`` bool may go to validation
    without taking the only item of one of their classes or tags."""
    if targets.ndim == 2:
        present = targets > 0
        sizes = present.sum(axis=0)
        groups = [np.flatnonzero(present[:, k]) for k in range(present.shape[1])]
        return groups, ~present[:, sizes < 2].any(axis=1)
    labels, inverse, sizes = np.unique(targets, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(sizes)[:-1])
    return groups, sizes[inverse] >= 2


def _quota(count: int, fraction: float) -> int:
    """Validation items of a class or tag with ``count`` items: at least one, never all."""
    return 0 if count < 2 else min(max(1, round(fraction * count)), count - 1)


def _fill_quotas(groups: list[np.ndarray], ranks: np.ndarray, fraction: float) -> np.ndarray:
    """Rarest group first: its items not placed yet go to validation, lowest rank first, until its
    quota is met; the rest to training. Items in no group (multi-label rows without tags) last."""
    placed = np.full(len(ranks), -1, dtype=np.int8)  # -1 not yet, 0 training, 1 validation
    order = sorted(range(len(groups)), key=lambda k: (len(groups[k]), k))
    for members in [groups[k] for k in order] + [None]:
        if members is None:
            members = np.flatnonzero(placed < 0)
        members = members[np.argsort(ranks[members], kind="stable")]
        free = members[placed[members] < 0]
        take = max(0, _quota(len(members), fraction) - int((placed[members] == 1).sum()))
        placed[free[:take]] = 1
        placed[free[take:]] = 0
    return placed == 1


def _lowest_ranked(movable: np.ndarray, ranks: np.ndarray, source: str) -> int:
    candidates = np.flatnonzero(movable)
    if not len(candidates):
        raise InvalidValueError(
            f"Expected a class or tag with at least 2 images in {source} to hold out a validation "
            f"split from, but each of its {len(ranks)} images has a class or tag no other image has: "
            "validation would take the only example. Fix: add images, or give validation images of "
            "your own (a val/ folder, or a 'split' column in a table)."
        )
    return int(candidates[np.argmin(ranks[candidates])])
