"""A dump rerun that reseals a cache (its ``seal`` missing or garbled and no copy left) checks, before
anything is written, that the stored targets are this teacher's on the recorded views.

The stored attributes then agree with the command, but a careless edit (the identity changed and its
fingerprint recomputed, the seal deleted) makes exactly that true; the targets were computed with the old
description, so replaying a few stored views through the teacher is what tells an intact cache from an
edited one. When they differ the reseal is undone and the dump refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kdcache.augment import ViewPipeline
from kdcache.cache import CacheStore
from kdcache.cache._layout import UnitLayout
from kdcache.cache._restore import unseal
from kdcache.engine._verify import _compare, _read_units, _replay, _sample_pairs, replay_matches
from kdcache.errors import CacheMismatchError

__all__ = ["confirm_reseal", "RESEAL_CHECKS"]

RESEAL_CHECKS = 8  # stored views replayed through the teacher


def confirm_reseal(store: CacheStore, before: Mapping[str, Any], model, pipeline: ViewPipeline, ds, *,
                   layout: UnitLayout, device: str, log: Callable[[str], None]) -> None:
    """Replay up to :data:`RESEAL_CHECKS` done views; undo the reseal and refuse when they disagree."""
    done = store.done()
    pairs = _sample_pairs(done, RESEAL_CHECKS, 0)
    if not len(pairs):
        log(f"{store.path}: no stored views to check; resealed")
        return
    picked = _read_units(store, pairs)
    fresh = _replay(model, pipeline, ds, pairs, picked, batch_size=RESEAL_CHECKS, device=device,
                    mode=store.target_mode)
    r = _compare(fresh, picked, pairs, store.target_mode, store.keys, None)
    if r["max_abs_diff"] is None:  # an embedding alone: its largest difference and tolerance stand in
        r = {**r, "max_abs_diff": r["embedding"]["worst"]["abs_diff"], "atol": r["embedding"]["worst"]["atol"]}
    if replay_matches(r):
        log(f"{store.path}: {len(pairs)} stored views match the teacher (max |diff| {r['max_abs_diff']:.3g}); "
            "resealed")
        return
    unseal(store.path, before, layout, store._storage_options)
    raise CacheMismatchError(
        f"cache {store.path}: attribute 'seal' was missing and its stored description was edited: the stored "
        f"targets are not this teacher's on the recorded views (max |diff| {r['max_abs_diff']:.3g} > "
        f"{r['atol']:.3g} on {len(pairs)} checked views), so the description the targets were computed with is "
        "lost; delete the cache and dump again")
