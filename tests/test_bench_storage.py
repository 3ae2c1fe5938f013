"""Smoke test of bench/storage.py at toy size: real caches written, bytes and KL reported per encoding."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_storage_bench_writes_caches_and_reports_bytes_and_kl(run_bench, tmp_path):
    out = tmp_path / "storage.json"
    cmd = [sys.executable, str(REPO / "bench" / "storage.py"), "--samples", "96", "--views", "2", "--classes", "300",
           "--ks", "1", "10", "--block-size", "32", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO / "bench")
    assert res.returncode == 0, res.stderr
    assert "top-10 arrays under candidate codecs" in res.stdout
    d = json.loads(out.read_text())
    rows = {(r["targets"], r["encoding"]): r for r in d["rows"]}
    assert set(rows) == {("full", "float16"), ("topk:1", "format 2"), ("topk:1", "format 1"),
                         ("topk:10", "format 2"), ("topk:10", "format 1")}
    full, q, v1 = rows["full", "float16"], rows["topk:10", "format 2"], rows["topk:10", "format 1"]
    # quantised top-k is smaller than float16 top-k, which is far smaller than full logits
    assert q["bytes_per_view"] < v1["bytes_per_view"] < full["bytes_per_view"] / 5
    assert {"topk_indices", "topk_steps", "topk_tail", "crop", "flip", "done"} <= set(q["per_array"])
    # full float16 logits rebuild the teacher almost exactly; top-1 loses far more than top-10
    assert full["kl"]["T=1"] < 1e-4 and rows["topk:1", "format 2"]["kl"]["T=1"] > q["kl"]["T=1"] > 0
    # the quantisation costs almost nothing next to the truncation to 10 classes
    assert q["kl"]["vs format 1, T=1"] < 1e-2 * q["kl"]["T=1"]
    assert 0 < d["logit_shape"]["mean_top1_prob"] < 1 and d["logit_shape"]["mean_entropy_nats"] > 0
    assert set(q["codecs"]) == {"crop", "topk_indices", "topk_steps", "topk_tail"}
