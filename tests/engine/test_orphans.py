"""No orphans (issue 29): when the main process of a dump or a training run is killed with SIGKILL, its
DataLoader workers exit within a few seconds (before, a dump's workers lived on for minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from engine_support import VIEWS, kdcache_cmd

pytestmark = pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
                                reason="needs Linux /proc children lists")


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_and_count(args: list[str], workers: int = 2) -> list[int]:
    """Start ``kdcache args``, wait for its workers, SIGKILL the main process; the workers still alive 5 s on."""
    p = subprocess.Popen(kdcache_cmd(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(kids := _children(p.pid)) < workers:
            assert p.poll() is None, f"exited before its workers started: {p.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.05)
        time.sleep(1.0)  # let them get to work (queues filled)
        kids = _children(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 5
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [k for k in kids if _alive(k)]
    finally:
        for k in _children(p.pid):
            os.kill(k, signal.SIGKILL)


def _workers(args: list[str], n: int) -> list[str]:
    i = args.index("--workers")
    return [*args[:i + 1], str(n), *args[i + 2:]]


def test_a_killed_dump_leaves_no_workers(world, tmp_path):
    args = _workers(world.dump_args(tmp_path / "c.zarr", views=VIEWS * 100), 2)
    survivors = _kill_and_count(args)
    for k in survivors:
        os.kill(k, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} DataLoader workers outlived the killed dump"


def test_a_killed_training_run_leaves_no_workers(world, tmp_path):
    args = _workers(world.train_args(world.reference, tmp_path / "run", epochs=500, steps=1000), 2)
    survivors = _kill_and_count(args)
    for k in survivors:
        os.kill(k, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} DataLoader workers outlived the killed training run"
