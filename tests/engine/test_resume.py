"""Crash safety of the dump: real SIGKILLs, interrupted creation, failing teachers, refused caches.

The contract under test (kdcache/cache/_store.py, kdcache/engine/_dump.py): a unit's data is
written before its ``done`` flag, so whatever instant a dump dies at, every unit marked done
holds final bytes, and rerunning the same command finishes the cache into exactly the store an
uninterrupted run writes. A dump that fails, or that is pointed at something that is not its
cache, leaves what is there untouched.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from engine_support import (
    BATCH,
    BLOCK,
    N_TRAIN,
    VIEWS,
    assert_bitwise_equal,
    assert_done_units_match,
    assert_stores_equal,
    cli_run,
    done_chunk_count,
    group_attrs,
    kdcache_cmd,
    logs,
    paused_writer_cmd,
    read_all_arrays,
    run,
    start,
    tree_digest,
    wait_for,
)
from kdcache.cli.main import cli

from kdcache.cache import CacheStore
from kdcache.engine import TeacherSpec
from kdcache.errors import CacheIncompleteError, CacheMismatchError, TeacherOutputError

BLOCKS = N_TRAIN // BLOCK


class _Crash(BaseException):
    """Stands in for a kill inside the process: nothing catches it, no cleanup code runs."""


def _one_line_error(result) -> str:
    """The CLI's error output must be a single 'Error: ...' line, never a traceback."""
    text = result.output
    assert result.exit_code != 0, text
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1, text
    return errors[0]


# ---------------------------------------------------------------------- SIGKILL and resume
@pytest.mark.slow
def test_resume_after_sigkills_matches_uninterrupted_dump(world, tmp_path):
    """Kill the same command during array creation and at two seeded points mid-dump; the rerun
    finishes a store equal, array for array and bit for bit, to the uninterrupted reference."""
    out = tmp_path / "c.zarr"
    args = world.dump_args(out)
    cmd = kdcache_cmd(args)
    total = world.num_units
    rng = np.random.default_rng(2024)
    kill_points = sorted(int(k) for k in (rng.integers(total // 8, 3 * total // 8),
                                          rng.integers(total // 2, 7 * total // 8)))

    # 1. Kill during creation, as soon as the group carries its identity (arrays being made).
    #    (Earlier instants are covered deterministically by test_crash_while_group_metadata_is_written.)
    proc = start(cmd, tmp_path, "creation")
    wait_for(lambda: "identity" in (group_attrs(out) or {}), proc, what="cache creation", interval=0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if not group_attrs(out).get("ready"):
        with pytest.raises(CacheIncompleteError):
            CacheStore.open(str(out))

    # 2. Kill at seeded unit counts, plus a seeded delay so the kill lands anywhere inside a unit
    #    (between a unit's data and its done flag included). Every done unit must be final.
    done = 0
    for i, k in enumerate(kill_points):
        proc = start(cmd, tmp_path, f"kill{i}")
        wait_for(lambda k=k: done_chunk_count(out) >= k, proc, what=f"{k} finished units")
        time.sleep(float(rng.uniform(0.0, 0.04)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the dump finished before the kill at {k} units\n{logs(proc)}"
        done = assert_done_units_match(out, world.reference)
        assert k <= done < total

    # 3. The same command again, to completion (in-process: the kills are what need processes): only the
    #    missing units are computed.
    result = cli_run(args + ["--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["units_computed"] == total - done
    assert summary["done_fraction"] == 1.0
    assert_stores_equal(out, world.reference)


@pytest.mark.slow
def test_random_init_teacher_dump_resumes_after_sigkill(world, tmp_path):
    """A --random-init teacher is seeded: a process killed midway and a fresh process that resumes
    build bit-identical weights, so the finished store equals one uninterrupted in-process dump."""
    teacher = ["--teacher", "cnn_tiny", "--random-init", "--init-seed", "7"]
    reference = tmp_path / "ref.zarr"
    world.dump(reference, teacher=TeacherSpec(name="cnn_tiny", random_init=True, init_seed=7))
    out = tmp_path / "c.zarr"
    cmd = kdcache_cmd(world.dump_args(out, teacher=teacher))
    # held after its first unit (a loaded machine can finish the 32 units between two polls), then killed
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = start(paused_writer_cmd(markers, world.dump_args(out, teacher=teacher)), tmp_path, "kill")
    wait_for(lambda: (markers / "wrote-one").exists(), proc, what="the first unit")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, logs(proc)
    done = assert_done_units_match(out, reference)
    assert 0 < done < world.num_units
    result = run(cmd + ["--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["units_computed"] == world.num_units - done
    assert_stores_equal(out, reference)
    assert CacheStore.open(str(out)).identity.teacher["random_init_seed"] == 7
    # Another seed is another teacher: the same cache refuses it by name.
    other = run(kdcache_cmd(world.dump_args(out, teacher=["--teacher", "cnn_tiny", "--random-init",
                                                          "--init-seed", "8"])))
    assert other.returncode == 1 and "random_init_seed" in other.stderr and "Traceback" not in other.stderr


class _WriteCrash(Exception):
    """Raised right after a chosen store write, inside zarr's event loop (so an Exception, not a
    BaseException, which would take the loop thread down with it)."""


@pytest.mark.parametrize("crash_after_write", [1, 2])
def test_crash_while_group_metadata_is_written(world, tmp_path, monkeypatch, crash_after_write):
    """However early creation dies, rerunning the same command recreates the cache."""
    out = tmp_path / "c.zarr"
    real_set = zarr.storage.LocalStore.set
    writes = {"n": 0}

    async def set_then_crash(self, key, value):
        await real_set(self, key, value)
        if key == "zarr.json" and Path(str(self.root)) == out:
            writes["n"] += 1
            if writes["n"] == crash_after_write:
                raise _WriteCrash(f"crash after write {writes['n']} of the group metadata")

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_then_crash)
    try:
        world.dump(out)
    except _WriteCrash:
        pass
    monkeypatch.undo()
    world.dump(out)  # the same command, rerun
    assert_stores_equal(out, world.reference)


def test_interrupted_creation_is_detected_and_redone(world, tmp_path, monkeypatch):
    """A crash while the arrays are being created leaves a cache that refuses to open, refuses a
    different configuration, and is recreated by the same command."""
    out = tmp_path / "c.zarr"
    real_create_array = zarr.Group.create_array
    calls = {"n": 0}

    def create_array_then_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise _Crash()
        return real_create_array(self, *args, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", create_array_then_crash)
    with pytest.raises(_Crash):
        world.dump(out)
    monkeypatch.undo()

    assert group_attrs(out)["ready"] is False
    with pytest.raises(CacheIncompleteError, match="interrupted"):
        CacheStore.open(str(out))
    before = tree_digest(out)
    with pytest.raises(CacheMismatchError):
        world.dump(out, seed=99)
    assert tree_digest(out) == before
    world.dump(out)
    assert_stores_equal(out, world.reference)


# ---------------------------------------------------------------------- adding views
def _chunk_files(root: Path) -> dict[str, tuple[int, bytes]]:
    """Chunk files of views 0 and 1 and of the per-sample arrays: relative path -> (mtime_ns, bytes)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            parts = p.relative_to(root).parts
            if len(parts) < 3 or parts[1] != "c":
                continue  # metadata (zarr.json), not a chunk
            index = parts[2:]
            if len(index) == 1 or int(index[1]) < 2:
                out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def test_add_views_keeps_old_views_and_equals_fresh_dump(world, two_view_cache, tmp_path):
    out = tmp_path / "c.zarr"
    shutil.copytree(two_view_cache, out)
    before_arrays = read_all_arrays(out)
    before_files = _chunk_files(out)
    assert before_files, "expected chunk files for views 0-1"

    summary = world.dump(out, views=None, add_views=2)
    assert (summary.num_views, summary.units_computed, summary.views_computed) == (4, BLOCKS * 2, N_TRAIN * 2)

    after = read_all_arrays(out)
    for name, old in before_arrays.items():
        new = after[name] if old.ndim == 1 else after[name][:, :2]
        assert_bitwise_equal(f"{name} (views 0-1)", new, old)
    assert _chunk_files(out) == before_files  # same files, same bytes, never rewritten
    assert CacheStore.open(str(out)).done().all()
    assert_stores_equal(out, world.reference)


def test_rerun_of_interrupted_add_views_resumes(world, two_view_cache, tmp_path, monkeypatch):
    out = tmp_path / "c.zarr"
    shutil.copytree(two_view_cache, out)
    real_write_unit = CacheStore.write_unit
    calls = {"n": 0}

    def write_then_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise _Crash()
        return real_write_unit(self, *args, **kwargs)

    monkeypatch.setattr(CacheStore, "write_unit", write_then_crash)
    with pytest.raises(_Crash):
        world.dump(out, views=None, add_views=2)
    monkeypatch.undo()
    world.dump(out, views=None, add_views=2)  # the same command, rerun
    assert_stores_equal(out, world.reference)


# ---------------------------------------------------------------------- failure paths
def test_output_under_a_regular_file_fails_with_one_line(world, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    out = tmp_path / "afile" / "cache.zarr"
    result = CliRunner().invoke(cli, world.dump_args(out))
    assert result.exit_code == 1
    assert str(out) in _one_line_error(result)
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_output_is_a_regular_file(world, tmp_path):
    out = tmp_path / "c.zarr"
    out.write_text("precious")
    line = _one_line_error(CliRunner().invoke(cli, world.dump_args(out)))
    assert str(out) in line
    assert out.read_text() == "precious"


def test_output_in_read_only_directory(world, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        probe = parent / ".probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a read-only directory does not stop writes; "
                        "the ENOTDIR case is covered by test_output_under_a_regular_file_fails_with_one_line")
        line = _one_line_error(CliRunner().invoke(cli, world.dump_args(parent / "c.zarr")))
        assert "c.zarr" in line
    finally:
        parent.chmod(0o700)


def test_existing_non_cache_directory_is_refused_and_untouched(world, tmp_path):
    out = tmp_path / "photos"
    (out / "2023").mkdir(parents=True)
    (out / "notes.txt").write_text("precious")
    (out / "2023" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = tree_digest(out)
    result = CliRunner().invoke(cli, world.dump_args(out))
    after = tree_digest(out)
    assert after == before, f"files were destroyed: before {sorted(before)}, after {sorted(after)[:5]}..."
    line = _one_line_error(result)
    assert str(out) in line


@pytest.fixture
def nan_teacher(world, tmp_path, monkeypatch):
    """A ``python:`` teacher: the reference teacher's weights, with NaN logits from a chosen forward call on."""
    name = f"kd_nan_teacher_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from kdcache.models._checkpoint import load_checkpoint

        WEIGHTS = {world.teacher!r}
        NAN_FROM_CALL = None  # 1-based forward call from which one logit of the batch is NaN
        calls = 0


        def build(*, num_classes):
            model, _ = load_checkpoint(WEIGHTS)
            model.register_forward_hook(_poison)
            return model


        def _poison(module, args, output):
            global calls
            calls += 1
            if NAN_FROM_CALL is not None and calls >= NAN_FROM_CALL:
                output = output.clone()
                output[-1, 0] = float("nan")
            return output
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module, f"python:{name}:build"
    sys.modules.pop(name, None)


def test_teacher_nan_fails_unit_and_keeps_earlier_units(world, tmp_path, nan_teacher):
    module, teacher_name = nan_teacher
    out = tmp_path / "c.zarr"
    # Work is block-major: a batch holds BATCH // VIEWS samples with all their views, so a block takes
    # BLOCK // (BATCH // VIEWS) forward calls. The NaN comes midway through block `good_blocks`.
    calls_per_block = BLOCK // (BATCH // VIEWS)
    good_blocks = 2
    module.NAN_FROM_CALL = good_blocks * calls_per_block + 2
    with pytest.raises(TeacherOutputError, match="NaN"):
        world.dump(out, teacher=TeacherSpec(name=teacher_name))

    store = CacheStore.open(str(out))
    du = store.done_units()
    expected = np.zeros_like(du)
    expected[:good_blocks, :] = True  # every view of blocks 0..good_blocks-1
    assert np.array_equal(du, expected), du
    bad_block = good_blocks
    assert not store.done()[bad_block * BLOCK:(bad_block + 1) * BLOCK].any()
    assert assert_done_units_match(out, world.reference) == good_blocks * VIEWS

    # Through the CLI: one line, non-zero exit, and the rerun (teacher fixed) finishes the cache,
    # recomputing only what was not done, into the reference's arrays.
    module.calls, module.NAN_FROM_CALL = 0, 1
    line = _one_line_error(CliRunner().invoke(cli, world.dump_args(out, teacher=["--teacher", teacher_name])))
    assert "NaN" in line
    assert np.array_equal(CacheStore.open(str(out)).done_units(), expected)
    module.NAN_FROM_CALL = None
    summary = world.dump(out, teacher=TeacherSpec(name=teacher_name))
    assert summary.units_computed == world.num_units - good_blocks * VIEWS
    got, want = read_all_arrays(out), read_all_arrays(world.reference)
    for name in want:
        assert_bitwise_equal(name, got[name], want[name])


@pytest.fixture
def other_teacher(tmp_path) -> str:
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    torch.manual_seed(2)
    path = tmp_path / "other_teacher.pt"
    save_checkpoint(str(path), create_model("cnn_tiny", num_classes=2))
    return str(path)


def test_dump_with_other_configuration_leaves_cache_untouched(world, tmp_path, other_teacher):
    out = tmp_path / "c.zarr"
    shutil.copytree(world.reference, out)
    before = tree_digest(out)
    stats_before = {p: os.stat(out / p).st_mtime_ns for p in before}
    base = world.dump_args(out)
    variants = {
        "teacher.weights_sha256": [*base, "--teacher-weights", other_teacher],
        "seed": [*base, "--seed", "4"],
        "targets": [*base, "--targets", "topk:1"],
    }
    for part, args in variants.items():
        result = CliRunner().invoke(cli, args)
        line = _one_line_error(result)
        assert part in line, f"{part!r} not named in: {line}"
        assert isinstance(result.exception, SystemExit)
    assert tree_digest(out) == before
    assert {p: os.stat(out / p).st_mtime_ns for p in before} == stats_before
    # ... and adding views with another configuration is refused before anything grows.
    line = _one_line_error(CliRunner().invoke(cli, [*world.dump_args(out, views=None), "--add-views", "1",
                                                    "--seed", "5"]))
    assert "seed" in line
    assert tree_digest(out) == before
