"""torchrun on CPU (gloo): a 2-rank dump writes the single-process store, 2-rank students train
with DDP and only rank 0 writes the run.

Which process wrote which file is recorded by tests/helpers/audit/sitecustomize.py (a Python
audit hook loaded into every rank), so the command under test is the real
``torchrun ... -m kdcache ...`` invocation.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from engine_support import (
    BATCH,
    HELPERS,
    N_TRAIN,
    VIEW_PX,
    assert_stores_equal,
    helper_env,
    read_audit,
    run,
    torchrun_cmd,
)

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import TrainConfig, train_student

pytestmark = pytest.mark.slow


def _renamed(writes: list[tuple[str, str]]) -> set[str]:
    """Files a process put in place (zarr and save_checkpoint write a temp file, then rename it)."""
    return {p for e, p in writes if e == "os.rename"}


def test_torchrun_dump_equals_single_process_dump(world, tmp_path):
    out = tmp_path / "c.zarr"
    audit = tmp_path / "audit"
    audit.mkdir()
    result = run(torchrun_cmd(2, world.dump_args(out, extra=["--json"])),
                 env=helper_env(KDCACHE_AUDIT_DIR=str(audit), KDCACHE_AUDIT_WATCH=str(out)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_stores_equal(out, world.reference)

    writes = read_audit(audit)
    assert {0, 1} <= set(writes), f"both ranks must be audited: {sorted(writes)}"
    placed = {r: _renamed(writes[r]) for r in (0, 1)}
    on_disk = {os.path.realpath(Path(d) / f) for d, _, fs in os.walk(out) for f in fs}
    def is_done_chunk(p: str) -> bool:
        return f"{os.sep}done{os.sep}c{os.sep}" in p

    # Every data chunk of the store was written by exactly one rank: no chunk is shared between ranks.
    # (done is written whole by rank 0 at creation, before the other ranks start; then each unit's done
    # chunk is rewritten by the rank that computed the unit.)
    shared = placed[0] & placed[1]
    assert not [p for p in shared if not is_done_chunk(p)], f"chunks written by both ranks: {sorted(shared)[:5]}"
    assert on_disk == placed[0] | placed[1]
    # Only rank 0 touches metadata; both ranks computed units (their done chunks).
    assert not [p for p in placed[1] if p.endswith("zarr.json")]
    done = {r: [p for e, p in writes[r] if e == "os.rename" and is_done_chunk(p)] for r in (0, 1)}
    assert len(done[1]) == len(set(done[1])) == world.num_units // 2
    assert len(done[0]) == world.num_units + world.num_units // 2  # creation, then its own units
    assert len(set(done[0])) == world.num_units and set(done[1]) <= set(done[0])


def test_torchrun_dump_when_rank0_reads_pending_units_late(world, tmp_path):
    out = tmp_path / "c.zarr"
    markers = tmp_path / "markers"
    markers.mkdir()
    cmd = torchrun_cmd(2, [])[:-2] + [str(HELPERS / "late_rank0.py"), str(markers), *world.dump_args(out)]
    result = run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    done = CacheStore.open(str(out)).done_units()
    assert done.all(), f"units never computed (block, view): {np.argwhere(~done).tolist()}"
    assert_stores_equal(out, world.reference)


def test_torchrun_students_write_from_rank0_only(world, tmp_path):
    run_dir = tmp_path / "run"
    audit = tmp_path / "audit"
    audit.mkdir()
    epochs = 2
    env = helper_env(KDCACHE_AUDIT_DIR=str(audit), KDCACHE_AUDIT_WATCH=os.pathsep.join([str(run_dir),
                                                                                          world.reference]))
    result = run(torchrun_cmd(2, world.train_args(world.reference, run_dir, epochs=epochs, steps=2)), env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    files = {"best.pt", "config.json", "last.pt", "metrics.jsonl", "test.json"}  # test.json: best.pt tested once
    tb = importlib.util.find_spec("tensorboard") is not None  # event files in tb/ with the optional extra
    assert {p.name for p in run_dir.iterdir()} == (files | {"tb"} if tb else files)
    if tb:
        assert len(list((run_dir / "tb").iterdir())) == 1  # one event file: rank 0's
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))

    writes = read_audit(audit)
    assert {0, 1} <= set(writes), f"both ranks must be audited: {sorted(writes)}"
    assert writes[1] == [], f"rank 1 wrote: {writes[1]}"
    assert not [p for ws in writes.values() for _, p in ws if p.startswith(os.path.realpath(world.reference))]
    rank0 = {Path(p).name for _, p in writes[0]}
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt"} <= rank0

    model, extra = load_checkpoint(str(run_dir / "last.pt"))
    assert extra["epoch"] == epochs - 1
    single = train_student(TrainConfig(data=DataConfig(source=world.data), out=str(tmp_path / "single"),
                                       model="cnn_tiny", cache=world.reference, val_split=None, epochs=1,
                                       batch_size=BATCH, max_steps_per_epoch=1, workers=0, device="cpu"),
                           progress=False, log=lambda _m: None)
    reference_model, _ = load_checkpoint(single["last"])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in reference_model.state_dict().items()}
    assert got == want
    assert all(np.isfinite(v.float().numpy()).all() for v in model.state_dict().values())


def test_torchrun_online_students_run_a_teacher_per_rank(world, tmp_path):
    """The online reference under DDP: each rank builds its own teacher and runs it on its own batches."""
    run_dir = tmp_path / "online"
    args = world.train_args(world.reference, run_dir, epochs=2, steps=2)
    i = args.index("--cache")
    args[i:i + 2] = ["--online-teacher", "cnn_tiny", "--teacher-weights", world.teacher, "--size", str(VIEW_PX)]
    result = run(torchrun_cmd(2, args))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["train/images"] == 2 * BATCH and r["train/kd_loss"] > 0 and "train/teacher_agreement" in r
               for r in rows)
    model, extra = load_checkpoint(str(run_dir / "last.pt"))
    assert extra["online_teacher"]["name"] == "cnn_tiny" and extra["config"]["cache"] is None
    assert all(np.isfinite(v.float().numpy()).all() for v in model.state_dict().values())


def test_torchrun_dump_stops_every_rank_when_one_fails(world, tmp_path):
    """Rank 1's teacher emits NaN: both ranks exit non-zero promptly (no rank left waiting at a barrier),
    and every unit marked done is intact."""
    import textwrap

    (tmp_path / "rank1_nan.py").write_text(textwrap.dedent(f"""
        import os

        from kdcache.models._checkpoint import load_checkpoint


        def build(*, num_classes):
            model, _ = load_checkpoint({world.teacher!r})
            if os.environ.get("RANK") == "1":
                model.register_forward_hook(lambda m, a, out: out * float("nan"))
            return model
    """))
    out = tmp_path / "c.zarr"
    env = helper_env(PYTHONPATH=os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    result = run(torchrun_cmd(2, world.dump_args(out, teacher=["--teacher", "python:rank1_nan:build"])),
                 env=env, timeout=120)
    assert result.returncode != 0
    assert "NaN" in result.stderr + result.stdout
    assert "another rank failed" in result.stderr + result.stdout
    store = CacheStore.open(str(out))
    done = store.done_units()
    assert done.any() and not done.all()
    ref = CacheStore.open(world.reference)
    for b, v in np.argwhere(done):
        for name in store.view_array_names:
            assert np.array_equal(store.read_unit(b, v, [name])[name], ref.read_unit(b, v, [name])[name]), name


def test_torchrun_students_train_repeated_views_in_merged_batches(world, tmp_path):
    """``--repeated-views 2`` under DDP (2 gloo ranks): merged batches train and stream their targets on every
    rank, and an epoch keeps the rank's sample count (the batches' makeup: tests/train/test_repeated_views.py)."""
    run_dir = tmp_path / "ra"
    args = world.train_args(world.reference, run_dir, epochs=1, steps=1000) + [
        "--repeated-views", "2", "--distill", "soft"]
    result = run(torchrun_cmd(2, args))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/images"] for r in rows] == [N_TRAIN // 2]  # rank 0's: N/W samples, N/(W·R) images
    assert np.isfinite(rows[0]["train/loss"])
