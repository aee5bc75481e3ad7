"""Deterministic holdout splits that do not depend on file listing order.

Each item is ranked by a keyed hash of a stable key (its relative path, or its index for array
datasets). Hashing instead of shuffling means adding files to a folder moves only the new files,
and the same files land in validation on every machine and Python version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from ..errors import InvalidValueError


def hash_unit(key: str | int, seed: int) -> float:
    """A number in ``[0, 1)`` fixed by ``(seed, key)``."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def holdout_mask(
    keys: Sequence[str | int], targets: np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """Pick a validation subset; returns a bool mask ``[N]`` (True = validation).

    Args:
        keys: one stable key per item ``[N]``.
        targets: ``[N]`` class indices (the split is stratified: each class with at least two
            items gives ``round(fraction * n)`` of them, at least one and never all) or
            ``[N, K]`` multi-hot (each item goes to validation with probability ``fraction``).
        fraction: share of items for validation, in ``(0, 1)``.
        seed: changes which items are picked.
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidValueError(f"Expected a holdout fraction in (0, 1), but got {fraction}.")
    if len(keys) != len(targets):
        raise InvalidValueError(
            f"Expected one key per target, but got {len(keys)} keys and {len(targets)} targets."
        )
    ranks = np.array([hash_unit(key, seed) for key in keys], dtype=np.float64)
    if np.ndim(targets) == 2:
        return ranks < fraction
    mask = np.zeros(len(keys), dtype=bool)
    targets = np.asarray(targets)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        if len(members) < 2:
            continue  # a single image must stay in training
        take = min(max(1, round(fraction * len(members))), len(members) - 1)
        mask[members[np.argsort(ranks[members], kind="stable")[:take]]] = True
    return mask
