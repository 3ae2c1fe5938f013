"""The dump's background writer: finished units are written on a thread while the teacher runs the next block.

The queue holds at most ``depth`` blocks (memory stays flat). The first failure is kept and raised in the
dump's own thread; the unit that failed was not marked done (``write_unit`` sets ``done`` last) and nothing
after it is written. A failed write is one line naming the path (for a full disk: what to free, how to resume).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from kdcache.cache import CacheStore
from kdcache.engine._space import write_error

__all__ = ["_Writer"]


class _Writer:
    """Writes finished units on a background thread, so the teacher's next forward overlaps the store write.

    The queue holds at most ``depth`` blocks (memory stays flat). The first failure is kept and raised in
    the dump's own thread at the next :meth:`submit` or at :meth:`close`; the unit that failed was not
    marked done (``write_unit`` sets ``done`` last) and nothing after it is written.
    """

    def __init__(self, store: CacheStore, out: str, bar, depth: int = 2):
        self.store, self.out, self.bar = store, out, bar
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: tuple[BaseException, str] | None = None
        self.thread = threading.Thread(target=self._loop, name="kdcache-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain: nothing more is written after a failure
            block, units = item
            for view, arrays, where in units:
                try:
                    self.store.write_unit(block, view, arrays)
                    self.bar.update(len(next(iter(arrays.values()))))
                except BaseException as e:  # noqa: BLE001 - handed to the dump's thread
                    self.error = (e, where)
                    break

    def submit(self, block: int, units: list[tuple[int, dict[str, np.ndarray], str]]) -> None:
        self._raise()
        self._put((block, units))

    def close(self, *, raise_error: bool = True) -> None:
        self._put(None)
        self.thread.join()
        if raise_error:
            self._raise()

    def _put(self, item) -> None:
        # never block on a full queue whose reader has stopped (it always drains; this guards a dead thread)
        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        if self.error is None:
            self.error = (RuntimeError("the cache writer thread stopped unexpectedly"), "the writer")

    def _raise(self) -> None:
        if self.error is None:
            return
        e, where = self.error
        if isinstance(e, OSError):
            raise write_error(self.out, e, where, self.store) from e
        raise e
