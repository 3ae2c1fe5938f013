"""Integrity of a cache: every chunk a reader relies on exists, passes its checksum and is finite.

A cache made with checksums (group attribute ``checksums: true``) ends every chunk of every array
with a CRC32C (zarr's ``crc32c`` codec, the last bytes codec), writes every chunk even when it
equals the fill value, and writes ``done`` whole (all false) at creation. So in such a cache

* every chunk of ``sample_key``, ``label`` and ``done`` exists,
* every chunk of a per-view array of a *done* unit exists,

and a missing chunk is damage, never "the fill value"; a chunk whose bytes changed (truncated,
overwritten, flipped) fails its checksum when it is decoded. Readers check existence once per
chunk they read and turn decode failures into :class:`~kdcache.errors.CacheDamagedError` naming
the array, the unit (block, view) or sample range, and the chunk's path.

A cache made before checksums (format 1 without the attribute) cannot tell a missing chunk from
one equal to the fill value (zarr skipped writing those); there only chunks that fail to decode,
and NaN/Inf targets, are found.

:func:`scan_cache` is the full pass (``verify --integrity-only`` and every rerun of the dump,
which recomputes the damaged units it finds).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kdcache.cache._damage import REPAIR_HINT, Damage, damage_error
from kdcache.errors import CacheDamagedError

if TYPE_CHECKING:
    from kdcache.cache._store import CacheStore

__all__ = ["Damage", "IntegrityReport", "damage_error", "scan_cache", "nonfinite_count", "REPAIR_HINT"]

def nonfinite_count(name: str, values: np.ndarray, *, topk_covers_all: bool = False) -> int:
    """NaN/Inf values of a float array (the top-k tail may be -inf when the top K is every class)."""
    if values.dtype.kind != "f":
        return 0
    bad = ~np.isfinite(values)
    if name in ("topk_tail", "topk_tail_lse") and topk_covers_all:
        bad &= ~np.isneginf(values)  # nothing left outside the top K: the tail is legitimately empty
    return int(bad.sum())


@dataclass
class IntegrityReport:
    """What :func:`scan_cache` looked at and what it found."""

    damage: list[Damage] = field(default_factory=list)
    checksums: bool = False
    units_done: int = 0
    chunks_checked: int = 0
    nonfinite_values: int = 0

    @property
    def damaged_units(self) -> list[tuple[int, int]]:
        return sorted({d.unit for d in self.damage if d.unit is not None})

    @property
    def damaged_sample_arrays(self) -> list[str]:
        return sorted({d.array for d in self.damage if d.unit is None})

    def to_dict(self) -> dict[str, Any]:
        return {"checksums": self.checksums, "units_done": self.units_done, "chunks_checked": self.chunks_checked,
                "nonfinite_values": self.nonfinite_values, "damaged_units": [list(u) for u in self.damaged_units],
                "damage": [d.to_dict() for d in self.damage]}


def scan_cache(store: CacheStore, *, decode: bool = True) -> IntegrityReport:
    """Check every chunk a reader relies on; never raises for damage, returns it.

    ``decode=False`` checks only that chunks exist (a listing per array; of the data only ``done``
    is read); ``decode=True`` also decodes every chunk of every done unit (its checksum) and counts
    NaN/Inf in the float targets. Data is decoded in slabs of whole blocks (all views at once, at most
    ``_SLAB_BYTES``), so zarr decodes many chunks per call; only a slab that fails is re-read chunk by
    chunk to name the bad ones.
    """
    rep = IntegrityReport(checksums=store.checksums)
    # Per-sample arrays: every chunk (a handful: 16384 samples each).
    for name in ("sample_key", "label"):
        coords = store.chunk_grid(name)
        rep.chunks_checked += len(coords)
        missing = set(store.missing_chunks(name, coords, listing=True))
        rep.damage.extend(store.chunk_damage(name, c, "missing") for c in coords if c in missing)
        if decode:
            rep.damage.extend(store.locate_damage(name, [c for c in coords if c not in missing]))
    # done: every chunk (it says which units the rest must hold), decoded always; the chunks of views
    # being added right now may not exist yet (CacheStore.settled_views): those read as not done.
    units = [(b, v) for v in range(store.num_views) for b in range(store.num_blocks)]
    adding = {u for u in units if u[1] >= store.settled_views}
    done_units = [u for u, values in _unit_values(store, rep, "done", units, skip_missing=adding)
                  if bool(np.all(values))]
    rep.units_done = len(done_units)
    topk_all = store.target_mode.kind == "topk" and store.target_mode.k >= store.num_classes
    must_be_finite = set(store.layout.float_target_names)
    for name in store.view_array_names:
        if not decode:
            _missing_units(store, rep, name, done_units)
            continue
        for (b, v), values in _unit_values(store, rep, name, done_units):
            bad = nonfinite_count(name, values, topk_covers_all=topk_all) if name in must_be_finite else 0
            if bad:
                rep.nonfinite_values += bad
                rep.damage.append(store.chunk_damage(name, store.unit_chunk(name, b, v), "nonfinite",
                                                     f"{bad} NaN/Inf values"))
    return rep


_SLAB_BYTES = 64 << 20  # decoded bytes per read while scanning


def _missing_units(store: CacheStore, rep: IntegrityReport, name: str, units: list[tuple[int, int]]
                   ) -> set[tuple[int, int]]:
    """Units whose chunk of ``name`` does not exist (recorded as damage); one listing of the array."""
    rep.chunks_checked += len(units)
    coords = {store.unit_chunk(name, b, v): (b, v) for b, v in units}
    missing = store.missing_chunks(name, list(coords), listing=True)
    rep.damage.extend(store.chunk_damage(name, c, "missing") for c in missing)
    return {coords[c] for c in missing}


def _unit_values(store: CacheStore, rep: IntegrityReport, name: str, units: list[tuple[int, int]], *,
                 skip_missing: set[tuple[int, int]] = frozenset()) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """(unit, decoded rows) of the units' chunks of a per-view array that exist and decode.

    Units in ``skip_missing`` are not checked for existence (a missing chunk reads as the fill value).
    """
    missing = _missing_units(store, rep, name, [u for u in units if u not in skip_missing])
    views_of: dict[int, list[int]] = defaultdict(list)
    for b, v in units:
        if (b, v) not in missing:
            views_of[b].append(v)
    arr = store.array(name)
    per_block = store.block_size * arr.shape[1] * math.prod(arr.shape[2:]) * np.dtype(arr.dtype).itemsize
    step = max(1, _SLAB_BYTES // max(per_block, 1))
    for first in range(0, store.num_blocks, step):
        blocks = [b for b in range(first, min(first + step, store.num_blocks)) if views_of.get(b)]
        if not blocks:
            continue
        r0, r1 = store.block_bounds(blocks[0])[0], store.block_bounds(blocks[-1])[1]
        try:
            slab = np.asarray(arr[r0:r1])
        except Exception:  # noqa: BLE001 - some chunk of the slab does not decode: go chunk by chunk
            slab = None
        for b in blocks:
            b0, b1 = store.block_bounds(b)
            for v in views_of[b]:
                if slab is not None:
                    yield (b, v), slab[b0 - r0:b1 - r0, v]
                    continue
                try:
                    yield (b, v), store.read_chunk(name, store.unit_chunk(name, b, v))
                except CacheDamagedError as e:
                    rep.damage.extend(e.damage)
