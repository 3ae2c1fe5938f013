"""Streamed targets: an epoch's order in windows of cache blocks, and its targets read a window ahead.

An epoch's teacher targets can be far larger than RAM (ImageNet-1k, full float16: 2.6 GB per
view), and under DDP each rank needs only its share. So a cached epoch is planned in *windows*:

* :func:`plan_epoch` puts the cache's blocks in a seeded random order, gives each rank a
  contiguous share of that order (a rank reads only the blocks its share covers), cuts the
  share into windows of ``window`` blocks and shuffles the samples inside each window. When
  one window holds the whole share (the default whenever the targets fit the memory budget)
  this is a plain shuffle of the rank's share; with smaller windows every batch still mixes
  ``window`` blocks drawn from anywhere in the data.
* :class:`StreamedTargets` reads each window's target chunks in a background thread while
  the previous window trains (at most two windows resident), looks a batch's targets up by
  sample index, and frees a block as soon as the last of its samples was served.

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

__all__ = ["EpochPlan", "plan_epoch", "window_blocks", "StreamedTargets"]


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


def window_blocks(memory_bytes: int, bytes_per_block: int, num_blocks: int) -> int:
    """Blocks per window so that two windows (the one training and the one read ahead) fit ``memory_bytes``."""
    return int(min(num_blocks, max(1, memory_bytes // max(1, 2 * bytes_per_block))))


class StreamedTargets:
    """A target source (``kdcache.train._targets``) that reads the epoch's targets window by window.

    ``views``: for each slot (one per view of a decoded image), the view each block trains on.
    A background thread reads window ``w + 1`` while window ``w`` trains and never holds more
    than two windows; a read error (a damaged chunk) is raised by the batch that needed the data.
    Batches must come in the plan's order (``plan.batches``), each slot's batch of a decoded image
    before the next image batch.
    """

    def __init__(self, store, views: Sequence[np.ndarray], names: Sequence[str], plan: EpochPlan):
        self.store = store
        self.views = [np.asarray(v) for v in views]
        self.names = list(names)
        self.plan = plan
        self.block_size = store.block_size
        m = len(self.views)
        self._remaining = {(j, w, b): n for w, win in enumerate(plan.windows) for b, n in win.items()
                           for j in range(m)}
        self._left = [len(win) * m for win in plan.windows]   # (slot, block) units of each window still in use
        self._first = 0                                    # the first window still in use
        self._data: dict[tuple[int, int, int], dict[str, np.ndarray]] = {}  # (slot, window, block) -> arrays
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None
        self.peak_blocks = 0  # most (slot, block) units resident at once (tests and benchmarks read it)

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
                    while w > self._first + 1 and not self._stop.is_set():
                        self._cond.wait(timeout=0.5)
                    if self._stop.is_set():
                        return
                    # a block the previous window also reads is shared, not read again
                    have = {(j, b): self._data[j, w - 1, b] for j in range(m) for b in win
                            if (j, w - 1, b) in self._data}
                need = [(j, b) for b in win for j in range(m) if (j, b) not in have]
                units = self.store.read_units([(b, int(self.views[j][b])) for j, b in need], self.names) \
                    if need else {}
                with self._cond:
                    for j, b in need:
                        have[j, b] = units[b, int(self.views[j][b])]
                    for (j, b), arrays in have.items():
                        self._data[j, w, b] = arrays
                    self.peak_blocks = max(self.peak_blocks, len({(j, b) for j, _, b in self._data}))
                    self._cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _take(self, slot: int, block: int, n: int) -> list[tuple[dict[str, np.ndarray], int]]:
        """Arrays for ``n`` samples of ``block``, from the earliest windows that still owe them (waits)."""
        out = []
        w = self._first
        while n > 0:
            while w < len(self.plan.windows) and self._remaining.get((slot, w, block), 0) <= 0:
                w += 1
            if w >= len(self.plan.windows):
                raise RuntimeError(f"cache block {block}: more samples requested than this epoch's plan holds "
                                   "(batches must follow the plan)")
            while (slot, w, block) not in self._data:
                if self._error is not None:
                    raise self._error
                self._cond.wait(timeout=0.5)
            k = min(n, self._remaining[slot, w, block])
            out.append((self._data[slot, w, block], k))
            self._remaining[slot, w, block] -= k
            if self._remaining[slot, w, block] == 0:
                del self._data[slot, w, block]
                self._left[w] -= 1
                while self._first < len(self._left) and self._left[self._first] == 0:
                    self._first += 1
                    self._cond.notify_all()
            n -= k
        return out

    # ------------------------------------------------------------------ the target source
    def __call__(self, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._thread is None:
            self._start()
        idx = np.asarray(batch.indices, dtype=np.int64)
        blk = idx // self.block_size
        rows = idx - blk * self.block_size
        blocks, counts = np.unique(blk, return_counts=True)
        with self._cond:
            parts = {b: self._take(batch.slot, b, n)[0][0] for b, n in zip(blocks.tolist(), counts.tolist())}
        out: dict[str, torch.Tensor] = {}
        for name in self.names:
            first = parts[int(blocks[0])][name]
            buf = np.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
            for b, arrays in parts.items():
                sel = blk == b
                buf[sel] = arrays[name][rows[sel]]
            out[name] = torch.from_numpy(buf).to(images.device, non_blocking=True)
        return out

    def close(self) -> None:
        """Stop the reader (an epoch cut short by ``max_steps_per_epoch``) and drop what it holds."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._data.clear()
