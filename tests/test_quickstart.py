"""A reduced quickstart end to end (the README's first command, made small)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from kdcache.cli.main import cli


def test_reduced_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    res = CliRunner().invoke(cli, ["quickstart", "--out", str(out), "--teacher-epochs", "2", "--student-epochs", "1",
                                   "--views", "2", "--limit", "200", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("teacher", "student from scratch", "student distilled", "dump teacher"):
        assert name in res.output
    result = json.loads((out / "quickstart.json").read_text())
    assert set(result["accuracy"]) == {"teacher", "student from scratch", "student distilled"}
    assert all(0 <= r["top1"] <= 100 and r["images"] == 359 for r in result["accuracy"].values())
    assert result["dump"]["num_views"] == 2 and result["dump"]["done_fraction"] == 1.0
    for path in ("teacher/best.pt", "teacher.zarr/zarr.json", "scratch/last.pt", "distilled/metrics.jsonl"):
        assert (out / path).exists(), path
