"""Smoke test of bench/cli_startup.py at toy size: one round, this checkout against itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cli_startup_bench_times_help_in_fresh_interpreters(run_bench, tmp_path):
    out = tmp_path / "cli.json"
    cmd = [sys.executable, str(REPO / "bench" / "cli_startup.py"), "--other", str(REPO), "--command=--help", "--command=info --help",
           "--rounds", "1", "--json", str(out)]
    res = run_bench(cmd, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["command"], r["mode"]) for r in rows] == [("--help", "this"), ("--help", "other"),
                                                         ("info --help", "this"), ("info --help", "other")]
    assert all(len(r["rounds_s"]) == 1 and r["median_s"] > 0 and r["heavy_imported"] == [] for r in rows), rows
    assert rows[1]["this_over_other"] > 0 and rows[0]["this_over_other"] is None
    assert "kdcache info --help" in res.stdout
