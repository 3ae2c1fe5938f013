"""Seeded, stratified subsets (``limit=``).

Real datasets are often stored ordered by class (the shared CIFAR-10 file is), so the first
``limit`` samples would be one class. A subset instead takes from every class in proportion
to its size. Which samples a class contributes is decided by hashing ``(seed, key)``: the
choice depends only on the seed and the sample keys, not on the storage order or on any
library's random-number stream, so it is the same on every machine and version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["apportion", "held_out", "stratified_subset"]


def apportion(counts: np.ndarray, limit: int) -> np.ndarray:
    """Split ``limit`` over classes of sizes ``counts`` in proportion (largest remainders).

    When ``limit`` is at least the number of non-empty classes, every one of them gets at
    least one sample, taken from the class with the largest share; a small class must not
    vanish from a subset.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    limit = min(int(limit), total)
    numer = counts * limit
    quota = numer // total
    remainder = numer % total
    short = limit - int(quota.sum())
    # Largest remainder first; ties go to the larger class, then the lower class index.
    order = sorted(range(len(counts)), key=lambda c: (-int(remainder[c]), -int(counts[c]), c))
    for c in order[:short]:
        quota[c] += 1
    nonempty = counts > 0
    if limit >= int(nonempty.sum()):
        for c in np.flatnonzero(nonempty & (quota == 0)):
            donor = int(np.argmax(quota))
            quota[donor] -= 1
            quota[c] += 1
    return quota


def stratified_subset(labels: np.ndarray, keys: Sequence[str], limit: int, seed: int) -> np.ndarray:
    """Positions of a class-proportional subset of ``limit`` samples, in ascending order.

    ``limit >= len(labels)`` keeps everything. Ascending order keeps the result
    deterministic and lets block-oriented sources read contiguous runs.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if limit >= n:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = apportion(counts, limit)
    chosen: list[np.ndarray] = []
    for cls, q in zip(classes, quota):
        if q == 0:
            continue
        members = np.flatnonzero(labels == cls)
        ranks = np.array([_rank(seed, keys[p]) for p in members], dtype=np.uint64)
        chosen.append(members[np.argsort(ranks, kind="stable")[:q]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _rank(seed: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def held_out(keys: Sequence[str], labels: Sequence[int] | np.ndarray, fraction: float) -> np.ndarray:
    """Per sample: does it belong to the held-out ``val`` part of a split divided by ``val_fraction``?

    In each class, the samples whose sha256(key) ranks lowest, ``round(fraction * n)`` of them (at least
    one, at most n - 1 when the class has n > 1 samples). The rule depends on the keys alone, so the
    division is the same on every machine and run, whatever the storage order.
    """
    labels = np.asarray(labels)
    held = np.zeros(len(keys), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = len(members)
        k = min(max(round(fraction * n), 1), n - 1) if n > 1 else 0
        ranked = sorted(members.tolist(), key=lambda i: hashlib.sha256(str(keys[i]).encode()).hexdigest())
        held[ranked[:k]] = True
    return held
