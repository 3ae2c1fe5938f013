"""The installed layout: every package is listed in pyproject.toml, and the CLI installs as kdcache.cli."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_and_cli_installs_as_kdcache_cli():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    st = cfg["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "kdcache").rglob("__init__.py")}
    found |= {"kdcache.cli." + ".".join(p.parent.relative_to(REPO / "cli").parts)
              for p in (REPO / "cli").rglob("__init__.py") if p.parent != REPO / "cli"}
    assert set(st["packages"]) == found | {"kdcache.cli"}
    assert st["package-dir"] == {"kdcache.cli": "cli"}
    assert cfg["project"]["scripts"]["kdcache"] == "kdcache.cli.main:main"
    import kdcache.cli.main

    assert Path(kdcache.cli.main.__file__).resolve() == REPO / "cli" / "main.py"
