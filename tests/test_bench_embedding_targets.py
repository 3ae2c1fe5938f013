"""Smoke test of bench/embedding_targets.py at toy size: each target kind is dumped in alternating rounds, and its
bytes per view on disk, the embedding's share and the dump rate land in the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_embedding_targets_bench_reports_bytes_and_rate_per_target_kind(run_bench, tmp_path, tiny_h5, tiny_teacher):
    out = tmp_path / "embedding_targets.json"
    cmd = [sys.executable, str(REPO / "bench" / "embedding_targets.py"), "--data", tiny_h5, "--teacher", "cnn_tiny",
           "--weights", tiny_teacher, "--images", "24", "--views", "2", "--rounds", "2", "--workers", "0",
           "--threads", "1", "--kinds", "full", "full+pooled:int8", "none+pooled:float16", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO / "bench")
    assert res.returncode == 0, res.stderr
    assert "embedding B/view" in res.stdout and res.stdout.count("round ") == 6  # 2 rounds x 3 kinds
    d = json.loads(out.read_text())
    rows = {r["targets"]: r for r in d["table"]}
    assert list(rows) == ["full", "full+pooled:int8", "none+pooled:float16"] and d["commit"]
    assert rows["full"]["embedding_dim"] is None and rows["full"]["embedding_bytes_per_view"] == 0
    assert rows["full+pooled:int8"]["embedding_dim"] == 32  # cnn_tiny's pooled features
    assert set(rows["full+pooled:int8"]["per_array"]) >= {"embedding", "embedding_scale", "logits", "crop"}
    assert rows["full+pooled:int8"]["bytes_per_view"] > rows["full"]["bytes_per_view"]
    assert rows["none+pooled:float16"]["stored_bytes_per_view_before_compression"] == 64
    assert all(len(r["views_per_second"]) == 2 and r["median_views_per_second"] > 0 for r in rows.values())
    assert rows["full"]["rate_vs_first"] == 1.0
