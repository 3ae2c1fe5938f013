"""Which cached view each sample trains on in an epoch.

All samples of a cache block share the epoch's view index. Views are independent draws
(each sample's view v has its own (seed, key, v) generator), so sharing the index costs no
randomness, and each epoch then reads exactly one chunk per block and array. Each block cycles
through all of its complete views once every V epochs, in a seeded order that differs per block
and per cycle; when epochs > V the views repeat (each once per cycle). Only views whose ``done``
is set are eligible, so a run can read a cache that is still being extended.
"""

from __future__ import annotations

import numpy as np

from kdcache.cache._teachers import common_done_units
from kdcache.errors import CacheIncompleteError

__all__ = ["epoch_views", "read_epoch"]


def epoch_views(done_units: np.ndarray, *, epoch: int, seed: int) -> np.ndarray:
    """(num_blocks,) view index per block for ``epoch`` from the (num_blocks, V) done-unit mask."""
    out = np.empty(done_units.shape[0], dtype=np.int64)
    for b in range(done_units.shape[0]):
        eligible = np.flatnonzero(done_units[b])
        if eligible.size == 0:
            raise CacheIncompleteError(f"cache block {b} has no complete view; finish the dump "
                                       "(rerun dump-teacher) before training")
        cycle, pos = divmod(int(epoch), eligible.size)
        rng = np.random.default_rng([int(seed), b, cycle, 0x6B64])
        out[b] = rng.permutation(eligible)[pos]
    return out


def read_epoch(store, *, epoch: int, seed: int, targets: bool = True, teachers=None
               ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What a cached run trains on in ``epoch``: (view per block, replay arrays, target arrays).

    The views are :func:`epoch_views` of the store's done units; every array is read once per block
    (one chunk each), in the calling process. Without ``targets`` only the replay arrays are read.
    ``teachers`` (name -> a teacher's store, ``kdcache.cache._teachers``): the views are those every one of
    them covers, and the targets are a mapping of each teacher's arrays by name.
    """
    if teachers is None:
        views = epoch_views(store.done_units(), epoch=epoch, seed=seed)
        names = store.layout.names if targets else store.layout.replay_names
        replay, teacher = store.layout.split(store.read_views(views, names=names))
        return views, replay, teacher
    views = epoch_views(common_done_units(store, list(teachers.values())), epoch=epoch, seed=seed)
    replay = store.read_views(views, names=store.layout.replay_names)
    return views, replay, ({n: t.read_views(views, names=t.layout.target_names) for n, t in teachers.items()}
                           if targets else {})
