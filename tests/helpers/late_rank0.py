"""Run ``kdcache`` under torchrun with rank 0 late to read the pending units (fault injection).

Usage: ``torchrun --nproc-per-node 2 late_rank0.py MARKER_DIR <kdcache arguments>``.

A busy node or a slow filesystem can delay any rank between two statements. This script makes
one such delay certain: on rank 0, the first ``CacheStore.pending_units()`` call waits until
rank 1 has either written a unit (``rank1-wrote``) or, after opening the store, entered a
collective (``rank1-waiting``: the ranks synchronise there, so no delay can matter), at most
30 s. The command itself is the unmodified CLI.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from kdcache.cache import CacheStore

MARKERS = Path(sys.argv[1])
RANK = int(os.environ.get("RANK", "0"))
WAIT_SECONDS = 30.0


def _rank0_waits_for_rank1() -> None:
    real = CacheStore.pending_units
    state = {"first": True}

    def late_pending_units(self):
        if state["first"]:
            state["first"] = False
            deadline = time.monotonic() + WAIT_SECONDS
            while time.monotonic() < deadline and not any(
                    (MARKERS / m).exists() for m in ("rank1-wrote", "rank1-waiting")):
                time.sleep(0.005)
        return real(self)

    CacheStore.pending_units = late_pending_units


def _rank1_reports() -> None:
    real_open, real_write = CacheStore.open.__func__, CacheStore.write_unit
    state = {"opened": False}

    def open_(cls, *args, **kwargs):
        store = real_open(cls, *args, **kwargs)
        state["opened"] = True
        return store

    def write_unit(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        (MARKERS / "rank1-wrote").touch()

    def collective(fn):
        def wrapper(*args, **kwargs):
            if state["opened"]:
                (MARKERS / "rank1-waiting").touch()
            return fn(*args, **kwargs)
        return wrapper

    CacheStore.open = classmethod(open_)
    CacheStore.write_unit = write_unit
    dist.barrier = collective(dist.barrier)
    dist.broadcast_object_list = collective(dist.broadcast_object_list)


if __name__ == "__main__":
    if RANK == 0:
        _rank0_waits_for_rank1()
    elif RANK == 1:
        _rank1_reports()
    sys.argv = ["kdcache", *sys.argv[2:]]
    from kdcache.cli.main import main

    main()
