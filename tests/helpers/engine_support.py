"""Support for the process-level engine tests (tests/engine): the shared world, store
comparison, and starting / polling / killing real kdcache processes.

Imported by tests/engine/conftest.py and the test modules (the conftest puts tests/helpers on
sys.path). The world's sizes are chosen so one dump is 32 units (8 blocks of 16 samples × 4
views) of 64 px views: about a second of teacher work, long enough to be killed midway, short
enough that the whole process-level suite stays within its time budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher

HELPERS = Path(__file__).resolve().parent
N_TRAIN, N_TEST, IMAGE_PX, VIEW_PX = 128, 16, 32, 64
VIEWS, BLOCK, BATCH, SEED = 4, 16, 16, 3
SUBPROCESS_TIMEOUT = 180


@dataclass(frozen=True)
class World:
    """The shared dataset, teacher and reference cache, with the one dump command they define."""

    root: Path
    data: str           # "hdf5:PATH"
    teacher: str        # kdcache checkpoint of the teacher
    reference: str      # V=VIEWS cache dumped without interruption

    @property
    def num_units(self) -> int:
        return (N_TRAIN // BLOCK) * VIEWS

    def dump_args(self, out: Path | str, *, views: int | None = VIEWS, teacher: Sequence[str] | None = None,
                  extra: Sequence[str] = ()) -> list[str]:
        """``kdcache dump-teacher`` arguments of the reference command, writing to ``out``.

        ``teacher`` replaces the teacher options (default: ``--teacher-weights`` of the world's teacher).
        """
        teacher = ["--teacher-weights", self.teacher] if teacher is None else list(teacher)
        args = ["dump-teacher", "--data", self.data, *teacher, "--out", str(out),
                "--seed", str(SEED), "--size", str(VIEW_PX), "--block-size", str(BLOCK),
                "--batch-size", str(BATCH), "--no-progress", "--workers", "0", "--device", "cpu"]
        if views is not None:
            args += ["--views", str(views)]
        return args + list(extra)

    def train_args(self, cache: Path | str, out: Path | str, *, epochs: int = 2, steps: int = 3,
                   seed: int = 0) -> list[str]:
        """``kdcache train-student`` arguments: a tiny student, a few capped steps, no validation."""
        return ["train-student", "--data", self.data, "--cache", str(cache), "--student", "cnn_tiny",
                "--out", str(out), "--epochs", str(epochs), "--max-steps-per-epoch", str(steps),
                "--batch-size", str(BATCH), "--val-split", "none", "--seed", str(seed), "--no-progress",
                "--workers", "0", "--device", "cpu"]

    def dump_config(self, out: Path | str, **overrides) -> DumpConfig:
        """The same command as a library config (``views``/``add_views``/... overridable)."""
        kw = dict(data=DataConfig(source=self.data), out=str(out), teacher=TeacherSpec(weights=self.teacher),
                  views=VIEWS, seed=SEED, view={"size": VIEW_PX}, batch_size=BATCH, workers=0,
                  block_size=BLOCK, device="cpu")
        kw.update(overrides)
        return DumpConfig(**kw)

    def dump(self, out: Path | str, **overrides):
        return dump_teacher(self.dump_config(out, **overrides), progress=False, log=lambda _m: None)


# ---------------------------------------------------------------------- comparing stores
def read_all_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the Zarr group, by name (so arrays the tests do not know about count too)."""
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][...]) for name in sorted(g.array_keys())}


def assert_bitwise_equal(name: str, a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
    if a.dtype.kind in "biufc":
        same = np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
        where = "" if same else f" (first difference at {np.argwhere(a != b)[:3].tolist()})"
        assert same, f"{name}: arrays differ bit for bit{where}"
    else:
        assert a.tolist() == b.tolist(), f"{name}: values differ"


def assert_stores_equal(got: str | Path, want: str | Path) -> None:
    """Same arrays, same bytes, same identity and geometry attributes."""
    a, b = read_all_arrays(got), read_all_arrays(want)
    assert sorted(a) == sorted(b), f"array names differ: {sorted(a)} != {sorted(b)}"
    for name in a:
        assert_bitwise_equal(name, a[name], b[name])
    ga, gb = CacheStore.open(str(got)), CacheStore.open(str(want))
    assert ga.identity == gb.identity
    assert ga.identity.fingerprint == gb.identity.fingerprint
    for key in ("kdcache_format", "ready", "num_samples", "num_views", "num_classes", "targets", "block_size",
                "view_arrays", "view_spec", "teacher"):
        assert ga.attrs[key] == gb.attrs[key], f"attribute {key!r} differs"


def assert_done_units_match(got: str | Path, want: str | Path) -> int:
    """Every unit ``got`` marks done holds exactly the reference's bytes; returns the done-unit count."""
    g, ref = CacheStore.open(str(got)), CacheStore.open(str(want))
    du = g.done_units()
    for b, v in zip(*np.nonzero(du)):
        mine, theirs = g.read_unit(int(b), int(v)), ref.read_unit(int(b), int(v))
        for name in g.view_array_names:
            assert_bitwise_equal(f"{name}[block {b}, view {v}]", mine[name], theirs[name])
    return int(du.sum())


def check_snapshot(path: str, reference: dict[str, np.ndarray], storage_options: dict | None = None
                   ) -> tuple[int, int]:
    """Open the cache as a new reader would and read every view the schedule can select from it; each must
    hold the reference's bytes (``reference``: per-view arrays by name). The first two views must be done.

    Returns (number of views, number of done units among the views being added).
    """
    from kdcache.train._schedule import epoch_views

    snap = CacheStore.open(path, storage_options=storage_options)
    du = snap.done_units()
    blocks = snap.num_blocks
    assert du.shape == (blocks, snap.num_views)
    assert du[:, :2].all(), "the two original views must stay done throughout"
    # One cycle of epochs visits every eligible view of every block once.
    for epoch in range(int(du.sum(axis=1).max())):
        views = epoch_views(du, epoch=epoch, seed=0)
        assert du[np.arange(blocks), views].all(), f"epoch {epoch} selected a view that is not done: {views}"
        got = snap.read_views(views)
        for name, values in got.items():
            want = np.concatenate([reference[name][b * BLOCK:(b + 1) * BLOCK, v] for b, v in enumerate(views)])
            assert_bitwise_equal(f"{name} (epoch {epoch}, views {views.tolist()})", values, want)
    return snap.num_views, int(du[:, 2:].sum())


def tree_digest(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------- processes
def kdcache_cmd(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "kdcache", *args]


def paused_writer_cmd(markers: Path, args: Sequence[str]) -> list[str]:
    """``kdcache args`` with the writer held after its first unit until ``markers/go`` (paused_writer.py)."""
    return [sys.executable, str(HELPERS / "paused_writer.py"), str(markers), *args]


def watch_growth(writer: subprocess.Popen, markers: Path, snapshot: Callable[[], tuple[int, int]],
                 poll: Callable[[tuple[int, int]], float]) -> list[tuple[int, int]]:
    """Take ``snapshot()`` until ``writer`` (a :func:`paused_writer_cmd`) exits, sleeping ``poll(last)`` between.

    Once the writer reports its first unit it is waiting, so the snapshot taken then sees the cache
    half grown whatever the machine's speed; then the writer is released. Returns every snapshot,
    the last one taken after the writer exited.
    """
    seen, released = [], False
    while writer.poll() is None:
        seen.append(snapshot())
        if not released and (markers / "wrote-one").exists():
            seen.append(snapshot())
            (markers / "go").touch()
            released = True
        time.sleep(poll(seen[-1]))
    assert released, f"the writer exited ({writer.returncode}) without writing a unit: {logs(writer)}"
    seen.append(snapshot())
    return seen


def torchrun_cmd(nproc: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "kdcache", *args]


_fork_server = None


def _forkable(cmd: Sequence[str], env: dict[str, str] | None) -> bool:
    """Whether ``cmd`` may start from the fork server (zygote.py): ``python -m kdcache ...`` or ``python
    SCRIPT.py ...``, with the test's own environment; torchrun and commands given an environment start
    fresh."""
    if env is not None or os.environ.get("KDCACHE_TEST_NO_FORK_SERVER") == "1" or cmd[0] != sys.executable:
        return False
    return list(cmd[1:3]) == ["-m", "kdcache"] or (len(cmd) > 1 and str(cmd[1]).endswith(".py"))


def _fork(cmd: Sequence[str], out: Path, err: Path):
    global _fork_server
    if _fork_server is None:
        from zygote import ForkServer

        _fork_server = ForkServer()
    return _fork_server.spawn(list(cmd[1:]), out, err)


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = SUBPROCESS_TIMEOUT
        ) -> subprocess.CompletedProcess:
    if not _forkable(cmd, env):
        return subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out, err = Path(d) / "out", Path(d) / "err"
        proc = _fork(cmd, out, err)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(list(cmd), proc.returncode, out.read_text(), err.read_text())


def cli_run(args: Sequence[str]) -> subprocess.CompletedProcess:
    """``kdcache args`` in this process (click's runner), as :func:`run` reports it: for the reruns that finish
    what a killed process left, where a fresh interpreter is not what the test is about (it saves ~3 s each)."""
    import traceback

    from click.testing import CliRunner
    from kdcache.cli.main import cli

    res = CliRunner().invoke(cli, [str(a) for a in args])
    err = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        err += "".join(traceback.format_exception(res.exception))
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, err)


def start(cmd: Sequence[str], log_dir: Path, name: str, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` with stdout/stderr going to files (a killed process never blocks on a pipe); a kdcache
    command from the fork server where :func:`_forkable` allows."""
    if _forkable(cmd, env):
        proc = _fork(cmd, log_dir / f"{name}.out", log_dir / f"{name}.err")
    else:
        out = open(log_dir / f"{name}.out", "w")
        err = open(log_dir / f"{name}.err", "w")
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env)
        out.close()
        err.close()
    proc.log_paths = (log_dir / f"{name}.out", log_dir / f"{name}.err")  # type: ignore[attr-defined]
    return proc


def logs(proc: subprocess.Popen) -> str:
    o, e = proc.log_paths  # type: ignore[attr-defined]
    return f"--- stdout\n{o.read_text()}\n--- stderr\n{e.read_text()}"


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, *, what: str, timeout: float = 120.0,
             interval: float = 0.002) -> None:
    """Poll ``predicate`` until true; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {what}\n{logs(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}\n{logs(proc)}")
        time.sleep(interval)


def done_chunk_count(out: Path) -> int:
    """Number of finished units: ``done`` chunks that are all true (every done chunk exists from
    creation, all false; chunk files are replaced atomically, so a concurrent read is safe)."""
    try:
        done = np.asarray(zarr.open_group(str(out), mode="r")["done"][...])
    except Exception:  # noqa: BLE001 - not created yet (or mid-creation): nothing finished
        return 0
    blocks = -(-done.shape[0] // BLOCK)
    return int(sum(done[b * BLOCK:(b + 1) * BLOCK].all(axis=0).sum() for b in range(blocks)))


def group_attrs(out: Path) -> dict | None:
    """The group's attributes as on disk (zarr.json is replaced atomically), or None."""
    try:
        return json.loads((out / "zarr.json").read_text()).get("attributes", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def helper_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess, with the audit sitecustomize on PYTHONPATH when asked."""
    env = dict(os.environ)
    env.update(extra)
    if "KDCACHE_AUDIT_DIR" in extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HELPERS / "audit"), env.get("PYTHONPATH")) if p)
    return env


def read_audit(audit_dir: Path) -> dict[int, list[tuple[str, str]]]:
    """Per rank: the (event, path) writes the audited processes made under the watched paths."""
    out: dict[int, list[tuple[str, str]]] = {}
    for f in sorted(audit_dir.glob("rank*.json")):
        rec = json.loads(f.read_text())
        out.setdefault(int(rec["rank"]), []).extend((e, p) for e, p in rec["writes"])
    return out
