"""Smoke test of bench/views.py at toy size: the three modes run side by side and the JSON holds their ratios."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_views_bench_compares_timm_replay_and_draw(run_bench, tmp_path, tiny_h5):
    out = tmp_path / "views.json"
    cmd = [sys.executable, str(REPO / "bench" / "views.py"), "--data", tiny_h5, "--size", "16", "--images", "12",
           "--rounds", "2", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO / "bench")
    assert res.returncode == 0, res.stderr
    d = json.loads(out.read_text())
    rows = {r["mode"]: r for r in d["table"]}
    assert set(rows) == {"timm", "replay", "draw"} and rows["timm"]["ratio_to_timm"] == 1.0
    assert all(len(r["rounds"]) == 2 and r["median_images_per_s"] > 0 for r in rows.values())
    assert d["spec"]["auto_augment"] == "rand-m9-mstd0.5-inc1" and d["images"] == 12
