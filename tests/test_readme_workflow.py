"""The README's Workflow commands run as written from a fresh checkout, at toy size.

Each command of the Workflow block is parsed from README.md and run in-process (click's runner) from an
empty directory beside which ``../shared`` is this workspace's shared data and weights, exactly where a
fresh clone finds them. Only the sizes change: fewer epochs, views and images (``--limit``), no workers.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOY = {"--epochs": "1", "--views": "2", "--samples": "4"}
LIMIT = "40"


def workflow_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"^## Workflow\n.*?```bash\n(.*?)```", readme, flags=re.S | re.M).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        current += line.rstrip("\\").strip() + " " if line.strip() else ""
        if line.strip() and not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def toy(argv: list[str]) -> list[str]:
    """The same command at toy size: small counts, a stratified subset of the data, no worker processes."""
    assert argv[0] == "kdcache", argv
    name, out = argv[1], argv[1:]
    for i, a in enumerate(out[:-1]):
        if a in TOY:
            out[i + 1] = TOY[a]
    params = {p.name for p in cli.get_command(None, name).params}
    if "limit" in params and ("--data" in out or name == "evaluate"):
        out += ["--limit", LIMIT]
    if "workers" in params:
        out += ["--workers", "0"]
    if "progress" in params:
        out += ["--no-progress"]
    return out


def test_the_workflow_block_is_parsed():
    cmds = workflow_commands()
    assert len(cmds) >= 12 and all(c.startswith("kdcache ") for c in cmds)
    assert any("dump-teacher" in c and "--out caches/r56.zarr" in c for c in cmds)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "data" / "cifar10.h5").exists(), reason="needs ../shared beside the checkout")
def test_readme_workflow_commands_run_as_written_from_a_fresh_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    monkeypatch.chdir(checkout)
    ran = 0
    for command in workflow_commands():
        if "..." in command:  # an elided command ("the same student from labels only")
            continue
        argv = toy(shlex.split(command))
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 0, f"{command}\n{res.output}\n{res.exception!r}"
        ran += 1
    assert ran >= 11
    assert (checkout / "caches" / "r56.h5").is_file() and (checkout / "curves.png").is_file()
    assert (checkout / "runs" / "deit" / "test.json").is_file()
