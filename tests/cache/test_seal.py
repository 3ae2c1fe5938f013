"""Fault injection on a cache's description (issue 20, part 1): each sealed attribute edited in turn must be
refused by every reader with one line naming the field; the dump rerun restores it from the seal's copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache import CacheDataset
from kdcache.cache import CacheStore
from kdcache.errors import CacheEditedError

REPO = Path(__file__).resolve().parents[2]

# (attribute path, new value): the identity's parts, the view description, the geometry.
EDITS = [
    (("identity", "view_spec", "size"), 8),
    (("identity", "seed"), 7),
    (("identity", "teacher", "weights_sha256"), "0" * 64),
    (("identity", "teacher", "name"), "resnet18"),
    (("identity", "dataset", "manifest_sha256"), "f" * 64),
    (("identity", "targets"), "topk:2"),
    (("view_spec", "spec"), {"size": 8}),
    (("teacher", "name"), "resnet18"),
    (("dataset", "split"), "test"),
    (("config", "seed"), 9),
    (("targets",), "topk:2"),
    (("num_classes",), 4),
    (("block_size",), 8),
    (("fingerprint",), "a" * 64),
]


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def _edit(path: str, keys: tuple[str, ...], value) -> None:
    g = zarr.open_group(path, mode="r+")
    attrs = dict(g.attrs)
    node = attrs
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    g.attrs.put(attrs)


@pytest.fixture
def sealed(make_cache, tmp_path):
    return make_cache(2, 16)


@pytest.mark.parametrize("keys,value", EDITS, ids=[".".join(k) for k, _ in EDITS])
def test_every_reader_refuses_an_edited_description(sealed, tmp_path, tiny_h5, tiny_teacher, keys, value):
    _edit(sealed, keys, value)
    field = ".".join(keys)
    with pytest.raises(CacheEditedError, match="no longer agree with the seal") as e:
        CacheStore.open(sealed)
    assert any(f.split(" ")[0] == field for f in e.value.fields), e.value.fields
    assert field in str(e.value)
    with pytest.raises(CacheEditedError, match="edited after its targets were computed"):
        CacheDataset(sealed, tiny_h5)
    r = CliRunner()
    commands = {
        "info": ["info", sealed],
        "verify": ["verify", sealed, "--integrity-only"],
        "export": ["export", sealed, str(tmp_path / "x.h5"), "--no-progress"],
        "train-student": ["train-student", "--data", tiny_h5, "--cache", sealed, "--student", "cnn_tiny",
                          "--out", str(tmp_path / "run"), "--epochs", "1", "--val-split", "none", "--workers", "0",
                          "--no-progress"],
    }
    for name, args in commands.items():
        line = _one_line(r.invoke(cli, args))
        assert "no longer agree with the seal" in line and field in line, (name, line)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_dump_rerun_restores_an_edited_description(sealed, tiny_h5, tiny_teacher):
    before = json.loads((Path(sealed) / "zarr.json").read_text())["attributes"]
    _edit(sealed, ("identity", "view_spec", "size"), 32)
    _edit(sealed, ("view_spec", "spec", "size"), 32)
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher-weights", tiny_teacher,
                                   "--out", sealed, "--views", "2", "--size", "16", "--block-size", "16",
                                   "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "restored the sealed attributes edited after the dump" in res.output
    assert "identity.view_spec.size" in res.output and "computed now: 0" in res.output
    after = json.loads((Path(sealed) / "zarr.json").read_text())["attributes"]
    assert after == before
    CacheStore.open(sealed)


def test_old_cache_without_seal_names_the_fingerprint(tmp_path):
    """Format-1 fixtures (no seal) still open; an edited identity there is refused by its fingerprint."""
    path = str(tmp_path / "v1.zarr")
    shutil.copytree(REPO / "tests" / "fixtures" / "v1_cache.zarr", path)
    for fixture in ("v1_cache.zarr", "v1_topk_cache.zarr"):
        CacheStore.open(str(REPO / "tests" / "fixtures" / fixture))
    _edit(path, ("identity", "seed"), 4)
    with pytest.raises(CacheEditedError, match="predates per-field seals") as e:
        CacheStore.open(path)
    assert e.value.fields == ["fingerprint"]
    line = _one_line(CliRunner().invoke(cli, ["verify", path, "--integrity-only"]))
    assert "is not the fingerprint of its stored identity" in line
