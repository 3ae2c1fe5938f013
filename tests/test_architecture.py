"""docs/architecture.md's module map lists every module of kdcache/, and no module is past ~400 lines."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 410  # "~400 lines": a module past this is split by idea


def test_every_module_is_in_the_map_and_every_mapped_module_exists():
    doc = (REPO / "docs" / "architecture.md").read_text()
    mapped = set(re.findall(r"^- `(kdcache/[\w/]+\.py)`:", doc, flags=re.M))
    modules = {str(p.relative_to(REPO)) for p in (REPO / "kdcache").rglob("*.py")}
    assert modules - mapped == set(), "modules missing from docs/architecture.md's module map"
    assert mapped - modules == set(), "the module map names modules that no longer exist"


def test_no_module_is_past_the_size_limit():
    big = {str(p.relative_to(REPO)): n for p in (REPO / "kdcache").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > LIMIT}
    assert big == {}, f"split these by idea: {big}"
