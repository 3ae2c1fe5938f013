"""Smoke test of bench/wds_read.py at toy size: the same JPEGs read from a folder and from shards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wds_read_bench_reads_the_same_images_from_both_sources(run_bench, tmp_path):
    pytest.importorskip("webdataset")
    out = tmp_path / "wds.json"
    cmd = [sys.executable, str(REPO / "bench" / "wds_read.py"), "--make", "12", "--classes", "3", "--per-shard",
           "5", "--rounds", "2", "--workers", "0", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO / "bench")
    assert res.returncode == 0, res.stderr
    d = json.loads(out.read_text())
    assert [r["source"] for r in d["rows"]] == ["folder", "wds"] and d["images"] == 12
    assert all(len(r["rounds_read_s"]) == 2 and r["images_per_s"] > 0 for r in d["rows"])
    assert "wds / folder images/s" in res.stdout
