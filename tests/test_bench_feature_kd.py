"""Smoke test of bench/feature_kd.py at toy size on the shared CIFAR-10: an embedding-only teacher added over the
cache's views, the teacher's k-NN top-1, and each student row's top-1 and k-NN top-1; a rerun resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_feature_kd_bench_reports_top1_and_knn_per_row(run_bench, tmp_path, shared_cifar):
    teacher = REPO / "bench" / "teachers" / "cifar_resnet56_ft50k.pt"
    if not teacher.exists():
        pytest.skip("the committed fine-tuned teacher is missing")
    out = tmp_path / "feature_kd.json"
    cmd = [sys.executable, str(REPO / "bench" / "feature_kd.py"), "--data", f"hdf5:{shared_cifar}", "--weights",
           str(teacher), "--limit", "40", "--test-limit", "30", "--views", "2", "--epochs", "1", "--seeds", "0",
           "--rows", "feature", "logit+feature", "--k", "5", "--workers", "0", "--batch-size", "64",
           "--workdir", str(tmp_path / "work"), "--json", str(out)]
    res = run_bench(cmd, cwd=REPO)
    assert res.returncode == 0, res.stderr + res.stdout
    d = json.loads(out.read_text())
    assert d["teacher"]["embedding_dim"] == 64 and d["teacher"]["knn_bank_images"] == 40
    assert 0 <= d["teacher"]["knn_top1"] <= 100 and d["teacher"]["knn_k"] == 5
    rows = d["rows"]
    assert set(rows) == {"cifar_resnet20/feature/s0", "cifar_resnet20/logit+feature/s0"}
    assert rows["cifar_resnet20/feature/s0"]["loss"]["task_weight"] == 0.0
    assert all(r["knn_dim"] == 64 and 0 <= r["knn_top1"] <= 100 for r in rows.values())  # resnet20: 64 channels
    assert not any(r["resumed"] for r in rows.values())  # a row resumed in a later call would say so
    again = run_bench(cmd, cwd=REPO)
    assert again.returncode == 0 and "== " not in again.stdout, again.stdout
