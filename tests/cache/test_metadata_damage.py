"""Metadata damage (issue 20, part 2): every zarr.json of a cache deleted, truncated or filled with invalid
JSON gives one line naming the file and the problem to every reader, and the dump command that made the
cache rewrites it (the store then equals the undamaged one)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache import CacheDataset
from kdcache.cache import CacheStore
from kdcache.errors import CacheMetadataError

from ..conftest import make_h5

NODES = ["", "sample_key", "label", "logits", "argmax", "crop", "flip", "done"]
DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "invalid": lambda p: p.write_text(p.read_text().replace('"', "'", 3)),
    "empty": lambda p: p.write_bytes(b""),
}
PROBLEM = {"deleted": "is missing", "truncated": "is truncated", "invalid": "is not valid JSON",
           "empty": "is empty"}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One cache and the command that made it (module-wide; tests damage copies)."""
    import torch

    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("metadata")
    data = "hdf5:" + str(make_h5(root / "tiny.h5"))
    torch.manual_seed(1)
    save_checkpoint(str(root / "teacher.pt"), create_model("cnn_tiny", num_classes=3))
    cache = root / "c.zarr"
    args = ["dump-teacher", "--data", data, "--teacher-weights", str(root / "teacher.pt"), "--views", "2",
            "--size", "16", "--block-size", "16", "--workers", "0", "--no-progress"]
    res = CliRunner().invoke(cli, [*args, "--out", str(cache)])
    assert res.exit_code == 0, res.output
    return {"data": data, "cache": cache, "args": args}


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def _contents(root: Path) -> dict[str, object]:
    """Every file: chunk bytes, and zarr.json parsed (key order aside)."""
    out: dict[str, object] = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            rel = str(p.relative_to(root))
            out[rel] = json.loads(p.read_text()) if f == "zarr.json" else p.read_bytes()
    return out


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("node", NODES, ids=[n or "group" for n in NODES])
def test_damaged_metadata_is_named_and_the_dump_rerun_rewrites_it(made, tmp_path, node, kind):
    cache = tmp_path / "c.zarr"
    shutil.copytree(made["cache"], cache)
    meta = cache / node / "zarr.json" if node else cache / "zarr.json"
    DAMAGE[kind](meta)
    r = CliRunner()
    for args in (["info", str(cache)], ["verify", str(cache), "--integrity-only"]):
        line = _one_line(r.invoke(cli, args))
        assert str(meta) in line and PROBLEM[kind] in line, line
        assert "not found" not in line and "rerun the dump-teacher command" in line, line
    with pytest.raises(CacheMetadataError, match=PROBLEM[kind]) as e:
        CacheStore.open(str(cache))
    assert e.value.file == str(meta)

    res = r.invoke(cli, [*made["args"], "--out", str(cache)])
    assert res.exit_code == 0, res.output
    assert ("rebuilt it" if not node else f"rewrote the metadata of {node}") in res.output
    assert "computed now: 0" in res.output
    assert _contents(cache) == _contents(made["cache"])


def test_readers_name_the_file(made, tmp_path):
    """train-student and CacheDataset too, for an array's invalid metadata and a lost group zarr.json."""
    cache = tmp_path / "c.zarr"
    shutil.copytree(made["cache"], cache)
    DAMAGE["invalid"](cache / "logits" / "zarr.json")
    with pytest.raises(CacheMetadataError, match=r"logits/zarr.json is not valid JSON"):
        CacheDataset(str(cache), made["data"])
    train = ["train-student", "--data", made["data"], "--cache", str(cache), "--student", "cnn_tiny", "--out",
             str(tmp_path / "run"), "--epochs", "1", "--val-split", "none", "--workers", "0", "--no-progress"]
    line = _one_line(CliRunner().invoke(cli, train))
    assert "metadata of array 'logits'" in line and "is not valid JSON" in line
    shutil.rmtree(cache)
    shutil.copytree(made["cache"], cache)
    (cache / "zarr.json").unlink()
    line = _one_line(CliRunner().invoke(cli, train))
    assert "group metadata" in line and "is missing (its arrays" in line and "not found" not in line


def test_unparsable_attribute_of_an_unsealed_cache(made, tmp_path):
    """A cache from before seals (format 2, no seal, no seal copy): the attribute itself is named. (A format-3
    cache without its seal is refused for the seal first: tests/cache/test_seal.py.)"""
    cache = tmp_path / "c.zarr"
    shutil.copytree(made["cache"], cache)
    done = json.loads((cache / "done" / "zarr.json").read_text())
    done["attributes"].pop("kdcache_seal")
    (cache / "done" / "zarr.json").write_text(json.dumps(done))
    g = zarr.open_group(str(cache), mode="r+")
    g.attrs.put({**{k: v for k, v in g.attrs.items() if k != "seal"}, "num_samples": "many", "kdcache_format": 2})
    line = _one_line(CliRunner().invoke(cli, ["info", str(cache)]))
    assert f"attribute 'num_samples' of {cache / 'zarr.json'} does not parse" in line


def test_lost_group_and_seal_copy_says_what_to_delete(made, tmp_path):
    cache = tmp_path / "c.zarr"
    shutil.copytree(made["cache"], cache)
    (cache / "zarr.json").unlink()
    (cache / "done" / "zarr.json").unlink()
    line = _one_line(CliRunner().invoke(cli, [*made["args"], "--out", str(cache)]))
    assert "cannot be rebuilt (done/zarr.json is unreadable too)" in line and f"delete {cache} and dump again" in line
