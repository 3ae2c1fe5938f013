"""Smoke test of bench/s3_read.py at toy size: one cache on local disk and on a moto S3 server, read per epoch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_s3_read_bench_reads_an_epoch_from_both_stores(run_bench, tmp_path):
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    out = tmp_path / "s3.json"
    cmd = [sys.executable, str(REPO / "bench" / "s3_read.py"), "--samples", "64", "--views", "2", "--classes", "5",
           "--block-size", "32", "--rounds", "2", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO / "bench")
    assert res.returncode == 0, res.stderr
    d = json.loads(out.read_text())
    assert [r["storage"] for r in d["rows"]] == ["local", "s3"]
    assert all(len(r["rounds_s"]) == 2 and r["median_s"] > 0 for r in d["rows"])
    assert d["target_bytes"] == 64 * (5 * 2 + 1)  # per sample: 5 float16 logits and an int8 argmax
    assert "s3 / local time" in res.stdout
    local, s3 = d["rows"]
    assert local["requests_by_round"] == [{}, {}] and local["median_requests"] == 0
    # every round reads 2 blocks' chunks, one GET each, and asks nothing about each chunk before reading it
    assert all(c["get_object"] >= 2 and c.get("head_object", 0) <= 1 for c in s3["requests_by_round"]), s3
    assert s3["median_requests"] == sum(s3["requests_by_round"][0].values())
