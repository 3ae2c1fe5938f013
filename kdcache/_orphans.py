"""DataLoader workers that exit with their main process, however it dies.

torch's workers notice a dead parent only between batches, and a worker that has results queued for a
parent that will never read them then blocks at exit, joining its queue's feeder thread: after a
``kill -9`` of a dump, its workers lived on for minutes holding their copies of the data. Every loader
kdcache makes therefore passes :func:`exit_with_parent` as its ``worker_init_fn``: a daemon thread in
each worker checks every :data:`POLL_SECONDS` whether the main process is still its parent and alive,
and ends the worker at once (``os._exit``: no queue to join, nothing to flush) when it is not. Polling,
not ``PR_SET_PDEATHSIG``: that signal follows the *thread* that started the worker, so a loader iterated
first from a short-lived thread would lose its workers while its process lives.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

__all__ = ["exit_with_parent", "POLL_SECONDS"]

POLL_SECONDS = 0.5


def _main_gone(main: int, parent: int) -> bool:
    if os.getppid() != parent:  # reparented: the process that started this worker has exited
        return True
    try:
        os.kill(main, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _watch(main: int, parent: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if _main_gone(main, parent):
            os._exit(1)


class _ExitWithParent:
    """A picklable ``worker_init_fn`` (spawn/forkserver workers unpickle it) that starts the watch, then
    calls ``chain`` (a caller's own ``worker_init_fn``)."""

    def __init__(self, chain: Callable[[int], None] | None = None):
        self.main = os.getpid()
        self.chain = chain

    def __call__(self, worker_id: int) -> None:
        # The worker's parent now: the main process (fork) or the fork server (forkserver / spawn helper).
        threading.Thread(target=_watch, args=(self.main, os.getppid()), name="kdcache-orphan-watch",
                         daemon=True).start()
        if self.chain is not None:
            self.chain(worker_id)


def exit_with_parent(chain: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` whose workers exit within about a second of their main process."""
    return _ExitWithParent(chain)
