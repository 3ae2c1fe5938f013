"""What kdcache writes inside a clone by default stays out of git (issue 30, item 16)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kdcache._quickstart import QuickstartConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_the_quickstarts_default_output_is_ignored():
    out = QuickstartConfig().out  # `kdcache quickstart` run from the clone's root writes here
    for path in (f"{out}/teacher/best.pt", f"{out}/quickstart.json", f"{out}/teacher.zarr/zarr.json"):
        res = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
        assert res.returncode == 0, f"{path} is not ignored by .gitignore"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_plots_default_output_at_the_clones_root_is_ignored():
    from kdcache.cli.plot import plot_cmd

    out = next(p.default for p in plot_cmd.params if p.name == "out")  # `kdcache plot RUNS` from the root
    assert subprocess.run(["git", "check-ignore", "--no-index", "-q", out], cwd=REPO).returncode == 0
    # a figure somebody means to keep, under docs/, is not
    assert subprocess.run(["git", "check-ignore", "--no-index", "-q", f"docs/{out}"], cwd=REPO).returncode == 1
