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

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kdcache.errors import CacheDamagedError

if TYPE_CHECKING:
    from kdcache.cache.store import CacheStore

__all__ = ["Damage", "IntegrityReport", "damage_error", "scan_cache", "nonfinite_count", "REPAIR_HINT"]

REPAIR_HINT = "rerun the dump-teacher command that made this cache to repair it (it recomputes damaged units)"
_PROBLEMS = ("missing", "corrupt", "nonfinite")


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: which array, which unit (per-view arrays) or sample rows, what is wrong."""

    array: str
    problem: str                     # "missing" | "corrupt" | "nonfinite"
    location: str                    # the chunk's path (file or URL)
    block: int | None = None         # per-view arrays and done: the unit (block, view)
    view: int | None = None
    samples: tuple[int, int] = (0, 0)  # rows [start, stop) the chunk holds
    detail: str = ""

    def __post_init__(self):
        if self.problem not in _PROBLEMS:
            raise ValueError(f"problem must be one of {_PROBLEMS}, got {self.problem!r}")

    @property
    def unit(self) -> tuple[int, int] | None:
        return None if self.view is None else (int(self.block), int(self.view))

    def describe(self) -> str:
        if self.view is not None:
            where = f"block {self.block}, view {self.view}"
        else:
            where = f"samples {self.samples[0]}-{self.samples[1] - 1}"
        what = {"missing": "is missing (deleted or never written)",
                "corrupt": f"is corrupt ({self.detail})",
                "nonfinite": f"holds {self.detail}"}[self.problem]
        return f"{self.array} chunk of {where} {what} [{self.location}]"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        d["message"] = self.describe()
        return d


def damage_error(path: str, damage: list[Damage]) -> CacheDamagedError:
    """One line: the first damaged chunk, how many more, and how to repair."""
    more = f" (and {len(damage) - 1} more damaged chunks)" if len(damage) > 1 else ""
    return CacheDamagedError(f"cache {path}: {damage[0].describe()}{more}; {REPAIR_HINT}", damage)


def nonfinite_count(name: str, values: np.ndarray, *, topk_covers_all: bool = False) -> int:
    """NaN/Inf values of a float array (``topk_tail_lse`` may be -inf when the top K is every class)."""
    if values.dtype.kind != "f":
        return 0
    bad = ~np.isfinite(values)
    if name == "topk_tail_lse" and topk_covers_all:
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

    ``decode=False`` checks only that chunks exist (a listing per array: fast, reads no data
    except ``done``); ``decode=True`` also decodes every chunk (its checksum) and counts NaN/Inf
    in the float targets of done units.
    """
    rep = IntegrityReport(checksums=store.checksums)
    # Per-sample arrays: every chunk.
    for name in ("sample_key", "label"):
        _check_chunks(store, rep, name, store.chunk_grid(name), decode=decode)
    # done: every chunk (it says which units the rest must hold), decoded always.
    units = [(b, v) for v in range(store.num_views) for b in range(store.num_blocks)]
    done_chunks = _check_chunks(store, rep, "done", [(b, v) for b, v in units], decode=True)
    done_units = [(b, v) for b, v in units if (b, v) in done_chunks and bool(np.all(done_chunks[(b, v)]))]
    rep.units_done = len(done_units)
    topk_all = store.target_mode.kind == "topk" and store.target_mode.k >= store.num_classes
    must_be_finite = set(store.layout.float_target_names)
    for name in store.view_array_names:
        tail = (0,) * (len(store.array(name).shape) - 2)
        chunks = _check_chunks(store, rep, name, [(b, v, *tail) for b, v in done_units], decode=decode)
        for coords, values in chunks.items():
            if name not in must_be_finite:
                continue
            bad = nonfinite_count(name, values, topk_covers_all=topk_all)
            if bad:
                rep.nonfinite_values += bad
                rep.damage.append(store.chunk_damage(name, coords, "nonfinite", f"{bad} NaN/Inf values"))
    return rep


def _check_chunks(store: CacheStore, rep: IntegrityReport, name: str, coords: list[tuple[int, ...]], *,
                  decode: bool) -> dict[tuple[int, ...], np.ndarray]:
    """Existence (checksummed caches) and, with ``decode``, the decoded values of the given chunks."""
    rep.chunks_checked += len(coords)
    missing = set(store.missing_chunks(name, coords, listing=True))
    rep.damage.extend(store.chunk_damage(name, c, "missing") for c in coords if c in missing)
    out: dict[tuple[int, ...], np.ndarray] = {}
    if not decode:
        return out
    for c in coords:
        if c in missing:
            continue
        try:
            out[c] = store.read_chunk(name, c, check_exists=False)
        except CacheDamagedError as e:
            rep.damage.extend(e.damage)
    return out
