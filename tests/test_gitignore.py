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
