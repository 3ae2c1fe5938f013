"""Streamed targets: an epoch's order in windows of cache blocks, and its targets read a window ahead.

An epoch's teacher targets can be far larger than RAM (ImageNet-1k, full float16: 2.6 GB per
view), and under DDP each rank needs only its share. So a cached epoch is planned in *windows*:

* :func:`plan_epoch` puts the cache's blocks in a seeded random order, gives each rank a
  contiguous share of that order (a rank reads only the blocks its share covers), cuts the
  share into windows of ``window`` blocks and shuffles the samples inside each window. When
  one window holds the whole share (the default whenever the targets fit the memory budget)
  this is a plain shuffle of the rank's share; with smaller windows every batch still mixes
  ``window`` blocks drawn from anywhere in the data. Blocks are runs of consecutive samples, so
  when the data is ordered by class (an image folder listed class by class) a small window holds
  few classes; :func:`window_class_coverage` measures that, and ``train-student`` warns.
* :class:`StreamedTargets` reads each window's target chunks in a background thread while
  the previous window trains (at most two windows resident), lays the window out in the order
  its samples are consumed (a batch's targets are a slice), and hands a window's buffer back
  for reuse once every slot has moved past it.

Replay parameters are small (tens of bytes a view) and stay whole-epoch arrays; only the
targets (hundreds to thousands of bytes a view) stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kdcache._views import ViewBatch
from kdcache.cache._targets import decode_targets
from kdcache.train._targets import by_slot

__all__ = ["EpochPlan", "plan_epoch", "truncate_plan", "window_blocks", "store_window", "block_target_bytes", "window_class_coverage", "StreamedTargets"]

_READ_GROUP = 2  # blocks read at a time while a window is assembled (their transient copies count too)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: its batches of sample indices and its windows, in order.

    ``windows[w]`` maps each block window ``w`` reads to how many of the window's samples come
    from it. A window holds at least ``batch_size`` samples (except the last), so a batch spans
    at most two windows."""

    batches: list[list[int]]
    windows: list[dict[int, int]]

    @property
    def blocks(self) -> list[int]:
        return sorted({b for w in self.windows for b in w})


def plan_epoch(num_samples: int, block_size: int, *, epoch: int, seed: int, batch_size: int,
               window: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
    """This rank's batches for ``epoch``: blocks in a seeded order, shuffled within windows of ``window`` blocks."""
    num_blocks = -(-num_samples // block_size)
    order = np.random.default_rng([int(seed), int(epoch), 0x626C]).permutation(num_blocks)
    seq = np.concatenate([np.arange(b * block_size, min((b + 1) * block_size, num_samples)) for b in order])
    per_rank = -(-num_samples // world_size)
    seq = np.resize(seq, per_rank * world_size)  # pad by wrapping so ranks stay in step
    mine = seq[rank * per_rank:(rank + 1) * per_rank]
    # Runs of one block; a window closes once it has `window` runs and at least a batch of samples.
    cuts = np.flatnonzero(np.diff(mine // block_size)) + 1
    runs = np.split(mine, cuts) if len(mine) else []
    groups: list[list[np.ndarray]] = [[]]
    for run in runs:
        g = groups[-1]
        if len(g) >= max(1, int(window)) and sum(len(r) for r in g) >= batch_size:
            groups.append(g := [])
        g.append(run)
    parts, windows = [], []
    for w, g in enumerate(groups):
        if not g:
            continue
        part = np.concatenate(g)
        blocks, counts = np.unique(part // block_size, return_counts=True)
        np.random.default_rng([int(seed), int(epoch), int(rank), w, 0x7769]).shuffle(part)
        parts.append(part)
        windows.append(dict(zip(blocks.tolist(), counts.tolist())))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return EpochPlan(batches=[flat[i:i + batch_size].tolist() for i in range(0, len(flat), batch_size)],
                     windows=windows)


def truncate_plan(plan: EpochPlan, keep: int, block_size: int, batch_size: int) -> EpochPlan:
    """The first ``keep`` samples of ``plan`` (in its order), rebatched, with the windows that hold them.

    Repeated views train an epoch on a share of the samples, each with several of its views: the share is
    the head of the rank's seeded, window-shuffled order, so it changes every epoch."""
    order = [i for b in plan.batches for i in b][:max(0, int(keep))]
    windows, start = [], 0
    for w in plan.windows:
        if start >= len(order):
            break
        part = np.asarray(order[start:start + sum(w.values())], dtype=np.int64)
        blocks, counts = np.unique(part // block_size, return_counts=True)
        windows.append(dict(zip(blocks.tolist(), counts.tolist())))
        start += len(part)
    return EpochPlan(batches=[order[i:i + batch_size] for i in range(0, len(order), batch_size)], windows=windows)


def window_blocks(memory_bytes: int, bytes_per_block: int, num_blocks: int) -> int:
    """Blocks per window so that two windows (the one training and the one read ahead) fit ``memory_bytes``."""
    return int(min(num_blocks, max(1, memory_bytes // max(1, 2 * bytes_per_block))))


def store_window(store, memory_mb: int, slots: int = 1, names=None) -> int:
    """:func:`window_blocks` for ``store``'s targets (those named, default all; or a mapping of a cache's
    teachers to ``(teacher store, names)``: all of them within the budget), ``slots`` views per sample, a budget
    of ``memory_mb``."""
    return window_blocks(int(memory_mb) << 20, block_target_bytes(store, slots, names), store.num_blocks)


def block_target_bytes(store, slots: int = 1, names=None) -> int:
    """Bytes of one block's targets in memory (see :func:`store_window` for ``names``)."""
    if isinstance(names, dict):
        per_view = sum(t.layout.bytes_per_view(n) for t, n in names.values())
    else:
        per_view = store.layout.bytes_per_view(names or store.layout.target_names)
    return store.block_size * per_view * slots


def window_class_coverage(plan: EpochPlan, labels: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """How well ``plan``'s windows mix classes: the mean share of the rank's classes a window holds, and the
    same for the same windows over randomly ordered labels (what a class-mixed order would give)."""
    order = np.concatenate([np.asarray(b, dtype=np.int64) for b in plan.batches]) if plan.batches else None
    if order is None or len(plan.windows) < 2:
        return 1.0, 1.0
    cuts = np.cumsum([sum(w.values()) for w in plan.windows])[:-1]
    labels = np.asarray(labels)
    mixed = np.random.default_rng(seed).permutation(labels)

    def mean_share(lab: np.ndarray) -> float:
        total = np.unique(lab[order]).size
        return float(np.mean([np.unique(lab[part]).size / total for part in np.split(order, cuts)]))

    return mean_share(labels), mean_share(mixed)


class StreamedTargets:
    """A target source (``kdcache.train._targets``) that reads the epoch's targets window by window.

    ``views``: for each slot (one per view of a decoded image), the view each block trains on.
    A background thread reads window ``w + 1`` while window ``w`` trains, laying each window's
    targets out in the order its samples are consumed, so a batch's targets are a slice; at most
    two windows are resident. Batches must come in the plan's order (each slot's in turn); one
    that does not is refused. A read error (a damaged chunk) is raised by the batch that needed it.
    """

    def __init__(self, store, views: Sequence[np.ndarray], names: Sequence[str], plan: EpochPlan):
        self.store = store
        self.views = [np.asarray(v) for v in views]
        self.names = list(names)
        self.plan = plan
        self.block_size = store.block_size
        self._order = (np.concatenate([np.asarray(b, dtype=np.int64) for b in plan.batches])
                       if plan.batches else np.zeros(0, np.int64))
        sizes = [sum(w.values()) for w in plan.windows]
        self._ends = np.cumsum(sizes).astype(np.int64)     # window w covers [ends[w-1], ends[w]) of the order
        self._cursor = [0] * len(self.views)                # each slot's position in the order
        self._data: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # (slot, window) -> arrays in order
        # Window buffers are reused once released (no allocation per window: the process's footprint stays
        # that of the windows held, whatever the epoch's length); each holds the largest window.
        self._capacity = max((sum(w.values()) for w in plan.windows), default=0)
        self._pool: list[dict[str, np.ndarray]] = []
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_blocks = 0  # most blocks' worth of targets allocated at once (tests and benchmarks read it)

    def _first_in_use(self) -> int:
        """The first window some slot still reads from."""
        return int(np.searchsorted(self._ends, min(self._cursor), side="right"))

    # ------------------------------------------------------------------ the reader
    def _start(self) -> None:
        # Started on first use, after the DataLoader forked its workers (they never see this thread).
        self._thread = threading.Thread(target=self._read_all, name="kdcache-targets", daemon=True)
        self._thread.start()

    def _read_all(self) -> None:
        m = len(self.views)
        try:
            for w, win in enumerate(self.plan.windows):
                with self._cond:
                    while w > self._first_in_use() + 1 and not self._stop.is_set():
                        self._cond.wait(timeout=0.5)
                if self._stop.is_set():
                    return
                blocks = list(win)
                start = int(self._ends[w - 1]) if w else 0
                samples = self._order[start:int(self._ends[w])]
                # each block's rows go where its samples are consumed; blocks are read a few at a time
                # and dropped once scattered, so a window costs its own size plus a few blocks
                blk = samples // self.block_size
                by_block = np.argsort(blk, kind="stable")
                cuts = np.searchsorted(blk[by_block], blocks)
                ends = np.searchsorted(blk[by_block], blocks, side="right")
                specs = self.store.layout.specs
                with self._cond:  # resident from now on: the windows held plus the one being assembled
                    buffers = [self._pool.pop() if self._pool else
                               {n: np.empty((self._capacity, *specs[n][0]), specs[n][1]) for n in self.names}
                               for _ in range(m)]
                    held = {x for _, x in self._data} | {w}
                    self.peak_blocks = max(self.peak_blocks, m * sum(len(self.plan.windows[x]) for x in held))
                ready = {(j, w): {n: a[:len(samples)] for n, a in buffers[j].items()} for j in range(m)}
                for g in range(0, len(blocks), _READ_GROUP):
                    if self._stop.is_set():
                        return
                    group = range(g, min(g + _READ_GROUP, len(blocks)))
                    wanted = {(blocks[i], int(self.views[j][blocks[i]])) for i in group for j in range(m)}
                    units = self.store.read_units(sorted(wanted), self.names)
                    for i in group:
                        b = blocks[i]
                        pos = by_block[cuts[i]:ends[i]]
                        rows = samples[pos] - b * self.block_size
                        for j in range(m):
                            unit = units[b, int(self.views[j][b])]
                            for n in self.names:
                                ready[j, w][n][pos] = unit[n][rows]
                    del units
                with self._cond:
                    self._data.update(ready)
                    self._cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
            with self._cond:
                self._error = e
                self._cond.notify_all()

    # ------------------------------------------------------------------ the target source
    def __call__(self, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if batch.parts:
            return by_slot(self, batch, images)
        if self._thread is None:
            self._start()
        slot = batch.slot
        idx = np.asarray(batch.indices, dtype=np.int64)
        p0 = self._cursor[slot]
        p1 = p0 + len(idx)
        if not np.array_equal(self._order[p0:p1], idx):
            raise RuntimeError("streamed targets: a batch out of the epoch plan's order (use the plan's batches, "
                               "in order)")
        w0 = int(np.searchsorted(self._ends, p0, side="right"))
        w1 = int(np.searchsorted(self._ends, p1 - 1, side="right")) if p1 > p0 else w0
        pieces: list[dict[str, np.ndarray]] = []
        with self._cond:
            for w in range(w0, w1 + 1):
                while (slot, w) not in self._data:
                    if self._error is not None:
                        raise self._error
                    self._cond.wait(timeout=0.5)
                start = int(self._ends[w - 1]) if w else 0
                a, b = max(p0, start) - start, min(p1, int(self._ends[w])) - start
                pieces.append({n: v[a:b] for n, v in self._data[slot, w].items()})
            # copies, made before a window's buffer can go back to the pool (and be overwritten)
            out = {n: np.concatenate([p[n] for p in pieces]) for n in self.names}
            self._cursor[slot] = p1
            first = self._first_in_use()
            for key in [k for k in self._data if k[1] < first]:
                self._pool.append({n: a.base if a.base is not None else a for n, a in self._data.pop(key).items()})
            self._cond.notify_all()
        # decoded on the CPU (uint16 increments have little device support), then moved
        return {n: torch.from_numpy(v).to(images.device, non_blocking=True) for n, v in decode_targets(out).items()}

    def close(self) -> None:
        """Stop the reader (an epoch cut short by ``max_steps_per_epoch``) and drop what it holds."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._data.clear()
        self._pool.clear()
