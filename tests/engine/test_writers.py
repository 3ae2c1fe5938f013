"""Concurrent and independent writers (issue 20, part 3).

Two or three dumps of one command into one ``--out``, started at once or staggered, killed and restarted:
none crashes, the later ones refuse in one line naming the writer they found, no view is computed twice,
and the store equals the lone reference dump. ``--shard I/N`` jobs in any start order (one killed and
rerun) give the reference store bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest
from click.testing import CliRunner
from engine_support import (
    BLOCK,
    N_TRAIN,
    VIEWS,
    assert_stores_equal,
    done_chunk_count,
    kdcache_cmd,
    logs,
    start,
    wait_for,
)
from kdcache.cli.main import cli

from kdcache.engine._lock import WriterLock, lock_dir, parse_shard
from kdcache.errors import CacheBusyError, CacheError, ConfigError

TOTAL_VIEWS = N_TRAIN * VIEWS
BUSY = re.compile(r"^Error: .* is being written by another dump-teacher \(pid (\d+) on host ")


def _finish(procs, timeout=180):
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except Exception:
            p.kill()
            p.wait()
            raise


def _outcome(p) -> tuple[str, int]:
    """("ok", views computed) or ("busy", pid named); anything else fails the test."""
    out, err = (path.read_text() for path in p.log_paths)
    assert "Traceback" not in out + err, logs(p)
    if p.returncode == 0:
        return "ok", int(re.search(r"computed now: (\d+)", out).group(1))
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert p.returncode == 1 and len(lines) == 1, logs(p)
    m = BUSY.match(lines[0])
    assert m, lines[0]
    return "busy", int(m.group(1))


@pytest.mark.slow
def test_dumps_started_at_once_never_crash_nor_compute_twice(world, tmp_path):
    out = tmp_path / "c.zarr"
    procs = [start(kdcache_cmd(world.dump_args(out)), tmp_path, f"d{i}") for i in range(3)]
    _finish(procs)
    outcomes = [_outcome(p) for p in procs]
    pids = {p.pid for p in procs}
    assert all(kind == "ok" or pid in pids for kind, pid in outcomes), outcomes
    assert any(kind == "ok" for kind, _ in outcomes), outcomes
    # the refused ones rerun (now alone): they compute what is left, which is nothing
    rerun = start(kdcache_cmd(world.dump_args(out)), tmp_path, "rerun")
    _finish([rerun])
    assert _outcome(rerun) == ("ok", 0)
    assert sum(v for kind, v in outcomes if kind == "ok") == TOTAL_VIEWS  # every view computed exactly once
    assert not os.path.exists(lock_dir(str(out)))
    assert_stores_equal(out, world.reference)


@pytest.mark.slow
def test_staggered_dump_refuses_then_takes_over_a_killed_writer(world, tmp_path):
    out = tmp_path / "c.zarr"
    first = start(kdcache_cmd(world.dump_args(out)), tmp_path, "first")
    try:
        wait_for(lambda: done_chunk_count(out) >= 4, first, what="4 units")
        os.kill(first.pid, signal.SIGSTOP)  # alive, holding its lock, writing nothing
        second = start(kdcache_cmd(world.dump_args(out)), tmp_path, "second")
        _finish([second])
        assert _outcome(second) == ("busy", first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    third = start(kdcache_cmd(world.dump_args(out)), tmp_path, "third")  # the dead writer's lock is stale
    _finish([third])
    kind, computed = _outcome(third)
    assert kind == "ok" and 0 < computed <= TOTAL_VIEWS - 4 * BLOCK
    assert_stores_equal(out, world.reference)


@pytest.mark.slow
@pytest.mark.parametrize("order,kill", [((2, 0, 1), 0), ((1, 2, 0), None)])
def test_shards_in_any_order_give_the_lone_dump(world, tmp_path, order, kill):
    out = tmp_path / "c.zarr"
    procs = {}
    for i in order:
        procs[i] = start(kdcache_cmd(world.dump_args(out, extra=["--shard", f"{i}/3"])), tmp_path, f"s{i}")
        time.sleep(0.3)
    try:
        if kill is not None:
            wait_for(lambda: done_chunk_count(out) >= 1, procs[kill], what="a unit")
            procs[kill].kill()
            procs[kill].wait()
        _finish([p for i, p in procs.items() if i != kill])
        for i, p in procs.items():  # each shard computes exactly its own blocks (b % 3 == i)
            if i != kill:
                assert _outcome(p) == ("ok", len(range(i, N_TRAIN // BLOCK, 3)) * BLOCK * VIEWS), logs(p)
        if kill is not None:  # rerun the killed shard: it finishes its own blocks only
            again = start(kdcache_cmd(world.dump_args(out, extra=["--shard", f"{kill}/3"])), tmp_path, "again")
            _finish([again])
            assert _outcome(again)[0] == "ok"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert_stores_equal(out, world.reference)


def test_a_held_lock_file_is_never_created_twice(tmp_path):
    """The meta and writer locks rest on one exclusive create: a second writer's create of a lock a live writer
    holds fails and leaves the holder's document as it was (so two dumps racing past the listing of locks in
    `acquire` still cannot both hold it; the process-level race tests cannot make that window reliably)."""
    out = str(tmp_path / "c.zarr")
    a, b = WriterLock(out), WriterLock(out)
    b.started = a.started + 1.0  # another writer of this process: alive, not a's
    a.hold_meta(log=lambda _m: None)
    held = open(os.path.join(lock_dir(out), "meta"), "rb").read()
    with pytest.raises(CacheBusyError, match="being prepared by another dump-teacher"):
        b.hold_meta(wait=0.3, poll=0.05, log=lambda _m: None)
    a.acquire()
    assert not b.files.create("all", b._doc()) and not b.files.create("meta", b._doc())
    assert open(os.path.join(lock_dir(out), "meta"), "rb").read() == held
    assert json.loads(open(os.path.join(lock_dir(out), "all")).read())["started"] == a.started
    a.release()
    assert not os.path.exists(lock_dir(out))


def test_lock_staleness(tmp_path):
    out = str(tmp_path / "c.zarr")
    mine = WriterLock(out)
    other = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "started": time.time(),
             "heartbeat": time.time(), "work": "all", "out": out}
    os.makedirs(lock_dir(out))
    path = os.path.join(lock_dir(out), "all")
    with open(path, "w") as f:
        json.dump(other, f)
    with pytest.raises(CacheBusyError, match=r"pid 1 on host .*-elsewhere, all, started .* last seen \d+ s ago"):
        mine.acquire()
    with pytest.raises(CacheBusyError, match="being written"):
        WriterLock(out, (1, 3)).acquire()  # a shard against a whole-store dump
    other["heartbeat"] = time.time() - 3600  # a writer on another host silent for an hour: stale
    with open(path, "w") as f:
        json.dump(other, f)
    mine.acquire()
    assert json.loads(open(path).read())["pid"] == os.getpid()
    mine.release()
    assert not os.path.exists(lock_dir(out))
    dead = {**other, "host": socket.gethostname(), "pid": 2 ** 22 + 12345, "heartbeat": time.time()}  # no such pid
    os.makedirs(lock_dir(out))
    with open(os.path.join(lock_dir(out), "meta"), "w") as f:
        json.dump(dead, f)
    mine.hold_meta(wait=5, log=lambda _m: None)  # a dead holder's meta lock is taken over at once
    mine.release()


def test_shards_of_another_n_conflict(tmp_path):
    out = str(tmp_path / "c.zarr")
    a = WriterLock(out, (0, 2))
    a.acquire()
    WriterLock(out, (1, 2)).acquire()  # another shard of the same N: fine
    with pytest.raises(CacheBusyError):
        WriterLock(out, (0, 3)).acquire()
    with pytest.raises(CacheBusyError):
        WriterLock(out).acquire()


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "x/2", "1", "0/0"])
def test_bad_shard_is_one_line(world, tmp_path, bad):
    with pytest.raises(ConfigError):
        parse_shard(bad)
    res = CliRunner().invoke(cli, world.dump_args(tmp_path / "c.zarr", extra=["--shard", bad]))
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith(("Error: --shard I/N needs 0 <= I < N", "Error: --shard must be I/N")), res.output
    assert not (tmp_path / "c.zarr").exists()


def test_locks_on_an_fsspec_store():
    out = "memory://kdcache-locks/c.zarr"
    a = WriterLock(out)
    a.hold_meta(log=lambda _m: None)
    a.acquire()
    a.release_meta()
    with pytest.raises(CacheBusyError, match=r"lock memory://kdcache-locks/c.zarr.locks/all"):
        WriterLock(out, (0, 2)).acquire()
    a.release()
    b = WriterLock(out, (0, 2))
    b.acquire()
    b.release()


def test_a_live_local_writer_is_never_stale_and_beats(tmp_path, monkeypatch):
    out = str(tmp_path / "c.zarr")
    os.makedirs(lock_dir(out))
    old = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0.0, "heartbeat": time.time() - 86400,
           "work": "all", "out": out}  # alive on this host, silent for a day (a very long block)
    with open(os.path.join(lock_dir(out), "all"), "w") as f:
        json.dump(old, f)
    with pytest.raises(CacheBusyError, match=f"pid {os.getppid()} on host"):
        WriterLock(out).acquire()
    os.remove(os.path.join(lock_dir(out), "all"))
    monkeypatch.setenv("KDCACHE_LOCK_TIMEOUT", "10")  # a beat every second
    lock = WriterLock(out, (0, 2))
    lock.acquire()
    first = json.loads(open(os.path.join(lock_dir(out), "shard-0-of-2")).read())["heartbeat"]
    time.sleep(1.6)
    assert json.loads(open(os.path.join(lock_dir(out), "shard-0-of-2")).read())["heartbeat"] > first
    lock.release()
    assert not os.path.exists(lock_dir(out))


# ---------------------------------------------------------------- issue 29: locks that recover
BAD_LOCKS = {
    "empty": lambda p: open(p, "wb").close(),
    "garbage": lambda p: open(p, "wb").write(b"\x00\x13not json at all"),
    "json but no lock": lambda p: open(p, "w").write('{"pid": null, "host": 3}'),
    "unreadable (a folder)": lambda p: os.mkdir(p),
}


@pytest.mark.parametrize("how", list(BAD_LOCKS))
@pytest.mark.parametrize("name", ["meta", "all"])
def test_an_unreadable_lock_is_stale_at_once_and_named(tmp_path, name, how):
    out = str(tmp_path / "c.zarr")
    os.makedirs(lock_dir(out))
    BAD_LOCKS[how](os.path.join(lock_dir(out), name))
    said: list[str] = []
    lock = WriterLock(out)
    t0 = time.monotonic()
    lock.hold_meta(wait=30, log=said.append)
    lock.acquire()
    assert time.monotonic() - t0 < 5
    assert len(said) == 1 and said[0].startswith(f"{out}: took over the stale lock {lock_dir(out)}/{name}: it "), said
    assert any(w in said[0] for w in ("empty", "no lock document", "cannot be read")), said
    assert json.loads(open(os.path.join(lock_dir(out), "all")).read())["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(lock_dir(out))


def test_a_dump_takes_over_empty_lock_files_in_one_line(world, tmp_path):
    out = tmp_path / "c.zarr"
    os.makedirs(lock_dir(str(out)))
    for name in ("meta", "all"):
        open(os.path.join(lock_dir(str(out)), name), "wb").close()  # a writer killed while creating them
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, world.dump_args(out))
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 < 60
    took = [ln for ln in res.output.splitlines() if "took over the stale lock" in ln]
    assert len(took) == 2 and all("it is empty" in ln for ln in took), res.output
    assert "waiting" not in res.output and "pid None" not in res.output
    assert not os.path.exists(lock_dir(str(out)))


def test_lock_messages_never_print_absurd_ages(tmp_path):
    out = str(tmp_path / "c.zarr")
    os.makedirs(lock_dir(out))
    other = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0, "heartbeat": 0, "work": "all"}
    with open(os.path.join(lock_dir(out), "all"), "w") as f:
        json.dump(other, f)  # a live local writer that never beat (and a start stamp of 0)
    with pytest.raises(CacheBusyError) as e:
        WriterLock(out).acquire()
    msg = str(e.value)
    assert "last seen never (no heartbeat recorded)" in msg and "started at an unknown time" in msg, msg
    assert "1970" not in msg and "pid None" not in msg


def test_a_lock_that_cannot_be_written_leaves_nothing(tmp_path, monkeypatch):
    """Out of space while writing the lock document: a one-line error naming the file and what to free, and no
    empty lock left behind for the next run to trip on."""
    import builtins
    import errno

    out = str(tmp_path / "c.zarr")
    real_open = builtins.open

    def full(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "w" in mode and str(path).startswith(lock_dir(out)):
            def write(_data):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(CacheError, match=r"cannot write its lock file .*/meta: No space left on device.*"
                                         r"free space on the filesystem of .* then run the same command again"):
        WriterLock(out).hold_meta(log=lambda _m: None)
    monkeypatch.undo()
    assert os.listdir(lock_dir(out)) == []
    lock = WriterLock(out)
    lock.hold_meta(wait=1, log=lambda _m: None)
    lock.release()
