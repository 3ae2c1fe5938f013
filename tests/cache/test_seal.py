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
    for name, args in _readers(sealed, tmp_path, tiny_h5).items():
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


# ---------------------------------------------------------------- issue 29: the seal is required
def _readers(sealed: str, tmp_path, tiny_h5) -> dict[str, list[str]]:
    return {
        "info": ["info", sealed],
        "verify": ["verify", sealed, "--integrity-only"],
        "export": ["export", sealed, str(tmp_path / "x.h5"), "--no-progress"],
        "train-student": ["train-student", "--data", tiny_h5, "--cache", sealed, "--student", "cnn_tiny",
                          "--out", str(tmp_path / "run"), "--epochs", "1", "--val-split", "none", "--workers", "0",
                          "--no-progress"],
    }


def _set_attrs(path: str, change) -> None:
    g = zarr.open_group(path, mode="r+")
    attrs = dict(g.attrs)
    change(attrs)
    g.attrs.put(attrs)


def _drop_copy(path: str) -> None:
    doc = json.loads((Path(path) / "done" / "zarr.json").read_text())
    doc["attributes"].pop("kdcache_seal")
    (Path(path) / "done" / "zarr.json").write_text(json.dumps(doc))


def _dump_args(tiny_h5, tiny_teacher, out, *extra):
    return ["dump-teacher", "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--out", out, "--views", "2",
            "--size", "16", "--block-size", "16", "--workers", "0", "--no-progress", *extra]


SEAL_DAMAGE = {
    "deleted": lambda a: a.pop("seal"),
    "a string": lambda a: a.__setitem__("seal", "garbage"),
    "null": lambda a: a.__setitem__("seal", None),
    "no fields": lambda a: a["seal"].__setitem__("fields", {}),
    "bad version": lambda a: a["seal"].__setitem__("version", 99),
    "short fingerprint": lambda a: a["seal"].__setitem__("fingerprint", "abc"),
}


@pytest.mark.parametrize("how", list(SEAL_DAMAGE))
def test_missing_or_garbled_seal_is_damage_for_every_reader(sealed, tmp_path, tiny_h5, how):
    from kdcache.errors import CacheMetadataError

    _set_attrs(sealed, SEAL_DAMAGE[how])
    with pytest.raises(CacheMetadataError, match="attribute 'seal'"):
        CacheStore.open(sealed)
    with pytest.raises(CacheMetadataError, match="attribute 'seal'"):
        CacheDataset(sealed, tiny_h5)
    r = CliRunner()
    for name, args in _readers(sealed, tmp_path, tiny_h5).items():
        line = _one_line(r.invoke(cli, args))
        assert "attribute 'seal'" in line and ("is missing" in line or "does not parse" in line), (name, line)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def _forge(attrs, *, keys=("identity", "view_spec", "mean"), value=(0.1, 0.2, 0.3), reseal=False):
    """A careless hand edit: the value changed and the fingerprint recomputed from the edited identity."""
    from kdcache.cache import CacheIdentity
    from kdcache.cache._seal import make_seal

    node = attrs
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = list(value)
    attrs["fingerprint"] = CacheIdentity.from_dict(attrs["identity"]).fingerprint
    if reseal:
        attrs["seal"] = make_seal({k: v for k, v in attrs.items() if k != "seal"})
    else:
        attrs.pop("seal")


def test_careless_edits_with_fingerprint_recomputed_end_in_refusal(sealed, tmp_path, tiny_h5):
    """Every careless path: fingerprint recomputed and seal deleted (damage), or seal recomputed too (it no
    longer equals its copy in done/zarr.json); no reader trains on either."""
    from kdcache.cache._seal import make_seal
    from kdcache.errors import CacheMetadataError

    _set_attrs(sealed, _forge)
    with pytest.raises(CacheMetadataError, match="attribute 'seal' is missing"):
        CacheStore.open(sealed)
    _set_attrs(sealed, lambda a: a.__setitem__("seal", make_seal(a)))
    with pytest.raises(CacheEditedError, match="no longer equals the copy kept in done/zarr.json") as e:
        CacheStore.open(sealed)
    assert e.value.fields == ["seal"]
    r = CliRunner()
    for name, args in _readers(sealed, tmp_path, tiny_h5).items():
        line = _one_line(r.invoke(cli, args))
        assert "seal" in line, (name, line)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_dump_rerun_restores_a_deleted_seal_from_its_copy(sealed, tiny_h5, tiny_teacher):
    before = json.loads((Path(sealed) / "zarr.json").read_text())["attributes"]
    _set_attrs(sealed, lambda a: a.pop("seal"))
    res = CliRunner().invoke(cli, _dump_args(tiny_h5, tiny_teacher, sealed))
    assert res.exit_code == 0, res.output
    assert "restored the sealed attributes" in res.output and "seal (missing)" in res.output
    assert json.loads((Path(sealed) / "zarr.json").read_text())["attributes"] == before
    CacheStore.open(sealed)


def test_dump_rerun_undoes_a_forged_seal_from_its_copy(sealed, tiny_h5, tiny_teacher):
    before = json.loads((Path(sealed) / "zarr.json").read_text())["attributes"]
    _set_attrs(sealed, lambda a: _forge(a, reseal=True))
    res = CliRunner().invoke(cli, _dump_args(tiny_h5, tiny_teacher, sealed))
    assert res.exit_code == 0, res.output
    assert "identity.view_spec.mean" in res.output
    assert json.loads((Path(sealed) / "zarr.json").read_text())["attributes"] == before


def test_dump_rerun_reseals_without_a_copy_when_targets_match(sealed, tiny_h5, tiny_teacher):
    before = json.loads((Path(sealed) / "zarr.json").read_text())["attributes"]
    _set_attrs(sealed, lambda a: a.pop("seal"))
    _drop_copy(sealed)
    res = CliRunner().invoke(cli, _dump_args(tiny_h5, tiny_teacher, sealed))
    assert res.exit_code == 0, res.output
    assert "resealed" in res.output and "stored views match the teacher" in res.output
    after = json.loads((Path(sealed) / "zarr.json").read_text())["attributes"]
    assert after["seal"] == before["seal"]
    assert json.loads((Path(sealed) / "done" / "zarr.json").read_text())["attributes"]["kdcache_seal"]
    CacheStore.open(sealed)


def test_dump_rerun_refuses_to_reseal_an_edited_cache(sealed, tiny_h5, tiny_teacher):
    """Seal and copy gone, identity edited with its fingerprint recomputed: the command that matches the edit
    finds the stored targets are not its teacher's on those views, undoes the reseal and refuses."""
    from kdcache.errors import CacheMetadataError

    _set_attrs(sealed, lambda a: _forge(a, value=(0.9, 0.1, 0.9)))
    _drop_copy(sealed)
    line = _one_line(CliRunner().invoke(cli, _dump_args(tiny_h5, tiny_teacher, sealed,
                                                        "--mean", "0.9", "0.1", "0.9")))
    assert "stored targets are not this teacher's" in line and "delete the cache" in line
    with pytest.raises(CacheMetadataError, match="attribute 'seal' is missing"):
        CacheStore.open(sealed)
    assert "kdcache_seal" not in json.loads((Path(sealed) / "done" / "zarr.json").read_text())["attributes"]


# ---------------------------------------------------------------- issue 29: messages that point at the cause
def test_an_edited_size_is_named_as_an_edit_never_blamed_on_the_data(sealed, tmp_path, tiny_h5):
    """size edited, fingerprint recomputed, seal deleted: every reader names the edit (from the seal's copy),
    and nothing says the data changed."""
    from kdcache.cache import CacheIdentity

    def edit(a):
        a["identity"]["view_spec"]["size"] = 8
        a["fingerprint"] = CacheIdentity.from_dict(a["identity"]).fingerprint
        a.pop("seal")

    _set_attrs(sealed, edit)
    for name, args in _readers(sealed, tmp_path, tiny_h5).items():
        line = _one_line(CliRunner().invoke(cli, args))
        assert "attribute 'seal' is missing" in line and "these fields were edited too: " in line, (name, line)
        assert "identity.view_spec.size" in line and "data changed" not in line, (name, line)


def test_a_dump_rerun_never_advises_rerunning_itself(sealed, tiny_h5, tiny_teacher):
    """A cache from before seals (format 2: no copy to restore from) with an attribute that does not parse:
    readers say to rerun the dump; the rerun, which cannot repair it, says what is left to do instead."""
    def old_and_broken(a):
        a.pop("seal")
        a["kdcache_format"] = 2
        a["num_classes"] = "three"

    _set_attrs(sealed, old_and_broken)
    _drop_copy(sealed)
    line = _one_line(CliRunner().invoke(cli, ["info", sealed]))
    assert "rerun the dump-teacher command that made this cache" in line
    line = _one_line(CliRunner().invoke(cli, _dump_args(tiny_h5, tiny_teacher, sealed)))
    assert "attribute 'num_classes'" in line and "does not parse" in line, line
    assert "dump-teacher command that made" not in line and f"delete {sealed} and dump again" in line, line


def test_an_edited_seal_copy_is_named_and_rewritten_by_the_rerun(sealed, tmp_path, tiny_h5, tiny_teacher):
    from kdcache.errors import CacheMetadataError

    before = json.loads((Path(sealed) / "done" / "zarr.json").read_text())
    doc = json.loads(json.dumps(before))
    doc["attributes"]["kdcache_seal"]["attrs"]["identity"]["seed"] = 5
    (Path(sealed) / "done" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(CacheMetadataError, match=r"the seal copy \(attribute 'kdcache_seal'\) of .*done/zarr.json "
                                                 r"was edited"):
        CacheStore.open(sealed)
    line = _one_line(CliRunner().invoke(cli, ["info", sealed]))
    assert "kdcache_seal" in line
    res = CliRunner().invoke(cli, _dump_args(tiny_h5, tiny_teacher, sealed))
    assert res.exit_code == 0 and "rewrote it from the seal" in res.output, res.output
    assert json.loads((Path(sealed) / "done" / "zarr.json").read_text()) == before
