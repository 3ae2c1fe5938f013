"""Smoke test of bench/ensemble.py at toy size on the shared CIFAR-10 and public ResNets: a cache of the main
teacher with two teachers added, every teacher's and the ensembles' test top-1, the add-teacher cost against
pure inference, and one student row per target (single teacher, ensemble); a rerun skips what is done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ensemble_bench_reports_teachers_cost_and_student_rows(run_bench, tmp_path, shared_cifar, shared_weights):
    teacher = REPO / "bench" / "teachers" / "cifar_resnet56_ft50k.pt"
    if not teacher.exists():
        pytest.skip("the committed fine-tuned teacher is missing")
    out = tmp_path / "ensemble.json"
    cmd = [sys.executable, str(REPO / "bench" / "ensemble.py"), "--data", f"hdf5:{shared_cifar}", "--weights",
           str(teacher), "--limit", "40", "--test-limit", "50", "--views", "2", "--epochs", "1", "--seeds", "0",
           "--rounds", "1", "--workers", "0", "--batch-size", "64", "--workdir", str(tmp_path / "work"),
           "--json", str(out)]
    res = run_bench(cmd, cwd=REPO)
    assert res.returncode == 0, res.stderr + res.stdout
    d = json.loads(out.read_text())
    assert set(d["teachers"]["top1"]) == {"main", "r56", "r44", "main+r56", "main+r56+r44"}
    assert d["teachers"]["test_images"] == 50
    assert set(d["cache"]["dump_seconds"]) == {"main", "r56", "r44"}
    assert d["cost"]["views"] == 80 and d["cost"]["time_ratio"] > 0
    assert set(d["rows"]) == {"cifar_resnet20/single/s0", "cifar_resnet20/ensemble/s0"}
    assert d["rows"]["cifar_resnet20/ensemble/s0"]["teachers"] == ["main", "r56", "r44"]
    assert not any(r["resumed"] for r in d["rows"].values())
    again = run_bench(cmd, cwd=REPO)
    assert again.returncode == 0 and "== " not in again.stdout, again.stdout  # nothing retrained
