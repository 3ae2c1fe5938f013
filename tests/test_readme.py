"""The README's two opening commands are the ones CI runs (install, quickstart, tests)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_install_plus_quickstart_and_the_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1).strip().splitlines()
    assert len(block) == 2, block
    install, tests = block
    assert install.endswith("&& kdcache quickstart")
    ci = (REPO / ".ci" / "run").read_text()
    install_steps = install.split(" && ")
    pip_steps = " && ".join(s for s in install_steps if s.startswith("pip install"))
    assert pip_steps and pip_steps in ci, "the README's pip install must be .ci/run's"
    assert tests.split()[:3] == ["python", "-m", "pytest"]
    assert "python -m pytest -q" in ci
