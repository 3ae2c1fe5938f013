"""Smoke test of bench/cifar10.py at toy size: every main row kind runs, the table and plots are written,
and a rerun skips the rows already measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cifar10_bench_at_toy_size(run_bench, tmp_path, tiny_h5, tiny_teacher):
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(REPO / "bench" / "cifar10.py"), "--data", tiny_h5, "--teacher", "cnn_tiny",
           "--teacher-weights", tiny_teacher, "--student", "cnn_tiny", "--full", "--epochs", "1",
           "--batch-size", "16", "--seeds", "0", "1", "--hard-views", "4", "8", "--rows", "main", "--workers", "0",
           "--workdir", str(tmp_path / "work"), "--json", str(out), "--plots", str(tmp_path / "plots")]
    first = run_bench(cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = {t["row"]: t for t in res["table"]}
    assert rows["cnn_tiny/scratch"]["seeds"] == 2 and rows["cnn_tiny/online-soft"]["seeds"] == 2
    assert {f"cnn_tiny/cached-soft-V{v}" for v in (1, 2, 4, 8, 16)} <= set(rows)
    assert res["dumps"]["full"]["views"] == 16 and set(res["dumps"]["full"]["seconds_at"]) == {"1", "2", "4", "8",
                                                                                                "16"}
    assert rows["cnn_tiny/cached-soft-V4"]["teacher_forwards"] == 48 * 4       # the dump's forwards
    assert rows["cnn_tiny/cached-hard-V4"]["teacher_forwards"] == 48 * 4 and "cnn_tiny/cached-hard-V8" in rows
    assert rows["cnn_tiny/online-soft"]["teacher_forwards"] == 48 * 1           # one per sample and epoch
    t = rows["cnn_tiny/cached-soft-V8"]
    assert t["cost_20"] - t["cost_5"] == 15 * t["run_seconds"] and t["cost_1"] > t["run_seconds"]
    assert all(0 <= t["top1"] <= 100 for t in rows.values())
    for png in ("cifar10_views.png", "cifar10_cost.png", "r_students.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run's cost is its epoch count times its fastest epoch, read from its metrics.jsonl
    r0, r1 = res["rows"]["cnn_tiny/cached-soft-V8/s0"], res["rows"]["cnn_tiny/cached-soft-V8/s1"]
    assert r0["train_seconds"] > 0 and t["run_seconds"] == (r0["train_seconds"] + r1["train_seconds"]) / 2
    seconds = r0["train_seconds"]
    for r in res["rows"].values():  # as written before train_seconds existed: the rerun fills it in
        del r["train_seconds"]
    out.write_text(json.dumps(res))
    again = run_bench(cmd)
    assert again.returncode == 0 and "== " not in again.stdout  # nothing retrained
    assert json.loads(out.read_text())["rows"]["cnn_tiny/cached-soft-V8/s0"]["train_seconds"] == seconds


def test_cifar10_bench_view_options_override_the_preset_in_every_cache(run_bench, tmp_path, tiny_h5, tiny_teacher):
    from kdcache.cache import CacheStore

    out, work = tmp_path / "r.json", tmp_path / "work"
    cmd = [sys.executable, str(REPO / "bench" / "cifar10.py"), "--data", tiny_h5, "--teacher", "cnn_tiny",
           "--teacher-weights", tiny_teacher, "--student", "cnn_tiny", "--full", "--epochs", "1",
           "--batch-size", "16", "--seeds", "0", "--rows", "main", "--workers", "0", "--view-preset", "deit-cifar",
           "--view-options", '{"mix": "none", "reprob": 0.5}', "--only", "cnn_tiny/scratch/s0",
           "--workdir", str(work), "--json", str(out)]
    res = run_bench(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    spec = CacheStore.open(str(work / "full.zarr")).identity.view_spec
    assert (spec["mix"], spec["reprob"], spec["auto_augment"], spec["crop"]) == ("none", 0.5, "rand-m9-mstd0.5-inc1",
                                                                                 "pad")
    assert json.loads(out.read_text())["key"]["view_options"] == '{"mix": "none", "reprob": 0.5}'
    assert "cnn_tiny/scratch/s0" in json.loads(out.read_text())["rows"]
    bad = subprocess.run(cmd[:cmd.index("--view-options") + 1] + ["{mix"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("cifar10.py: error: argument --view-options: not JSON")


def _toy_cmd(tmp_path, tiny_h5, tiny_teacher, *extra):
    return [sys.executable, str(REPO / "bench" / "cifar10.py"), "--data", tiny_h5, "--teacher", "cnn_tiny",
            "--teacher-weights", tiny_teacher, "--student", "cnn_tiny", "--full", "--epochs", "1",
            "--batch-size", "16", "--seeds", "0", "--rows", "main", "--workers", "0",
            "--only", "cnn_tiny/scratch/s0", "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "r.json"),
            *extra]


def test_cifar10_bench_waits_for_another_process_dumping_its_cache(tmp_path, tiny_h5, tiny_teacher):
    """Two queues of rows side by side: the one that finds the cache's writer lock held waits, then goes on."""
    from kdcache.engine._lock import WriterLock

    (tmp_path / "work").mkdir()
    lock = WriterLock(str(tmp_path / "work" / "full.zarr"))
    lock.hold_meta()
    lock.acquire()
    lock.release_meta()
    p = subprocess.Popen(_toy_cmd(tmp_path, tiny_h5, tiny_teacher), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        seen = []
        for line in p.stdout:
            seen.append(line)
            if "waiting up to" in line:
                break
        assert "is being written by another dump-teacher" in seen[-1], "".join(seen)
        assert p.poll() is None  # still waiting, the cache untouched
        assert not (tmp_path / "r.json").exists()
    finally:
        lock.release()
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "cnn_tiny/scratch/s0" in json.loads((tmp_path / "r.json").read_text())["rows"]


def test_cifar10_bench_library_errors_are_one_line(tmp_path, tiny_h5, tiny_teacher):
    res = subprocess.run(_toy_cmd(tmp_path, f"hdf5:{tmp_path / 'missing.h5'}", tiny_teacher), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: ")
    assert "missing.h5" in res.stderr
