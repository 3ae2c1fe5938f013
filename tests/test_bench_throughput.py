"""Smoke test of bench/throughput.py at toy size: every part and mode runs and the JSON holds medians and ratios."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_bench_at_toy_size(run_bench, tmp_path, tiny_h5):
    out = tmp_path / "t.json"
    cmd = [sys.executable, str(REPO / "bench" / "throughput.py"), "--data", tiny_h5, "--size", "16",
           "--teacher", "cnn_tiny", "--student", "cnn_tiny", "--views", "2", "--views-per-image", "2",
           "--batch-size", "8", "--block-size", "16", "--workers", "0", "--steps", "3", "--rounds", "2",
           "--read-samples", "64", "200", "--read-classes", "20", "--read-block-size", "16", "--read-batch-size", "8",
           "--target-memory-mb", "1", "--step-only", "--feature", "--json", str(out)]
    res = run_bench(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["medians"]["train"]) == {"plain", "cached", "cached-m2", "online", "step-only", "cached-feature"}
    assert set(r["medians"]["dump"]) == {"dump", "infer"}
    assert set(r["medians"]["read"]) == {f"N={n} {t} {m}" for n in (64, 200) for t in ("full", "topk:10")
                                         for m in ("whole", "stream")}
    assert set(r["rss"]) == {"N=64 full", "N=200 full"}
    assert all(v["peak_over_baseline"] >= v["index"] and v["peak_blocks"] >= 1 for v in r["rss"].values())
    assert all(len(v) == 2 and min(v) > 0 for part in r["rounds"].values() for v in part.values())
    assert {"cached/plain", "cached-m2/plain", "online/plain", "step-only/plain", "cached/online", "dump/infer",
            "targets rss max/min", "cached-feature/plain", "cached-feature/cached"} == set(r["ratios"])


def test_throughput_bench_data_path_with_ema_and_channels_last(run_bench, tmp_path, tiny_h5):
    out = tmp_path / "d.json"
    cmd = [sys.executable, str(REPO / "bench" / "throughput.py"), "--data", tiny_h5, "--size", "16",
           "--teacher", "cnn_tiny", "--student", "cnn_tiny", "--views", "2", "--views-per-image", "2",
           "--batch-size", "8", "--block-size", "16", "--workers", "0", "--steps", "2", "--rounds", "2",
           "--parts", "train", "data", "--no-online", "--ema-decay", "0.99", "--channels-last", "--json", str(out)]
    res = run_bench(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["medians"]["data"]) == {"data-plain", "data-m1", "data-m2"}
    assert set(r["medians"]["train"]) == {"plain", "cached", "cached-m2"}
    assert {"data-m1/data-plain", "data-m2/data-plain", "cached/plain"} <= set(r["ratios"])
    assert r["args"]["ema_decay"] == 0.99 and r["args"]["channels_last"] is True
