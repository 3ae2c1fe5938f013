"""Damage is detected, named and repaired: fault injection into the chunks of a finished cache.

For each array kind (targets ``logits`` / ``topk_tail`` / ``topk_indices``, parameters ``crop`` / ``flip``,
``view_seed``, ``done``) and each fault (delete the chunk file, truncate it, flip a byte), the
fault is injected at three units of a copy of the reference cache. Then

* the integrity scan names exactly those chunks (array, block, view) and the problem;
* every reader refuses them with a one-line error naming array, block and view and how to repair;
* rerunning the same dump command repairs the cache into the uninterrupted reference, bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from engine_support import BLOCK, N_TRAIN, VIEWS, assert_stores_equal
from kdcache.cli.main import cli

from kdcache.cache import CacheStore
from kdcache.cache._export import export_hdf5
from kdcache.cache._info import cache_info
from kdcache.cache._integrity import scan_cache
from kdcache.engine._verify import verify_integrity
from kdcache.errors import CacheDamagedError

BLOCKS = N_TRAIN // BLOCK
UNITS = ((0, 0), (3, 1), (BLOCKS - 1, VIEWS - 1))  # (block, view): first, a middle one, the last
FAULTS = ("delete", "truncate", "flip")
KINDS = (("full", "logits"), ("topk", "topk_tail"), ("topk", "topk_indices"), ("full", "crop"),
         ("full", "flip"), ("full", "done"))
TOPK = "topk:1"


@pytest.fixture(scope="module")
def references(world) -> dict[str, str]:
    """The uninterrupted reference caches: the world's full-logit one and a top-k one."""
    topk = str(world.root / "topk_reference.zarr")
    if not Path(topk).exists():
        world.dump(topk, targets=TOPK)
    return {"full": world.reference, "topk": topk}


def _inject(path: Path, fault: str) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    if fault == "delete":
        path.unlink()
    elif fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x55
        path.write_bytes(bytes(flipped))


def _damage_units(store: CacheStore, name: str, units, fault: str) -> None:
    for b, v in units:
        _inject(Path(store.chunk_location(name, store.unit_chunk(name, b, v))), fault)


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS, ids=[name for _, name in KINDS])
def test_damage_is_detected_named_refused_and_repaired(world, references, tmp_path, kind, fault):
    targets, name = kind
    ref = references[targets]
    out = tmp_path / "c.zarr"
    shutil.copytree(ref, out)
    _damage_units(CacheStore.open(str(out)), name, UNITS, fault)
    problem = "missing" if fault == "delete" else "corrupt"

    # Detected and named: exactly the injected chunks, nothing else.
    store = CacheStore.open(str(out))
    rep = scan_cache(store)
    assert sorted((d.array, d.block, d.view, d.problem) for d in rep.damage) == \
        sorted((name, b, v, problem) for b, v in UNITS)
    assert rep.damaged_units == sorted(UNITS)
    assert all(Path(d.location).parent.exists() and f"{name}/c/{d.block}/{d.view}" in d.location
               for d in rep.damage)

    # Refused by readers, with the array, the unit and how to repair it.
    b, v = UNITS[0]
    message = rf"{name} chunk of block {b}, view {v} is {problem}.*rerun the dump-teacher command"
    if name == "done":
        with pytest.raises(CacheDamagedError, match=message):
            store.done_units()
    else:
        with pytest.raises(CacheDamagedError, match=message):
            store.read_unit(b, v)
        views = np.zeros(BLOCKS, dtype=np.int64)
        for bb, vv in UNITS:
            views[bb] = vv
        with pytest.raises(CacheDamagedError, match=message) as e:
            store.read_views(views)
        assert len(e.value.damage) == (3 if fault == "delete" else 1)  # existence is checked in one batch
    with pytest.raises(CacheDamagedError, match=message):
        cache_info(str(out)) if fault == "delete" else export_hdf5(str(out), tmp_path / "x.h5")
    assert not verify_integrity(str(out))["ok"]

    # Repaired by rerunning the same dump: exactly the damaged units, bytes of an uninterrupted dump.
    summary = world.dump(out, targets=targets if targets == "full" else TOPK)
    assert summary.units_computed == len(UNITS)
    assert_stores_equal(out, ref)
    assert not scan_cache(CacheStore.open(str(out))).damage


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", ["sample_key", "label"])
def test_damaged_per_sample_arrays_are_named_and_rewritten(world, tmp_path, name, fault):
    out = tmp_path / "c.zarr"
    shutil.copytree(world.reference, out)
    store = CacheStore.open(str(out))
    _inject(Path(store.chunk_location(name, (0,))), fault)
    rep = scan_cache(CacheStore.open(str(out)))
    assert [(d.array, d.samples, d.unit) for d in rep.damage] == [(name, (0, N_TRAIN), None)]
    with pytest.raises(CacheDamagedError, match=rf"{name} chunk of samples 0-{N_TRAIN - 1}"):
        CacheStore.open(str(out)).keys if name == "sample_key" else CacheStore.open(str(out)).labels
    summary = world.dump(out)
    assert summary.units_computed == 0
    assert_stores_equal(out, world.reference)


def test_cli_refuses_a_damaged_cache_and_a_rerun_repairs_it(world, tmp_path):
    """Faults of every kind at once: verify lists them all, info/export/train-student refuse with one
    line naming the unit and the repair, and the dump command repairs everything."""
    out = tmp_path / "c.zarr"
    shutil.copytree(world.reference, out)
    store = CacheStore.open(str(out))
    injected = {}
    for i, name in enumerate(["logits", "crop", "flip", "argmax", "done"]):
        unit = (i % BLOCKS, i % VIEWS)
        _damage_units(store, name, [unit], FAULTS[i % 3])
        injected[(name, *unit)] = "missing" if FAULTS[i % 3] == "delete" else "corrupt"
    runner = CliRunner()

    res = runner.invoke(cli, ["verify", str(out), "--integrity-only", "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output[: res.output.rindex("}") + 1])
    assert {(d["array"], d["block"], d["view"]): d["problem"] for d in report["damage"]} == injected
    res = runner.invoke(cli, ["verify", str(out), "--integrity-only"])
    assert "integrity check failed" in _one_line_error(res)
    assert "logits chunk of block 0, view 0 is missing (deleted or never written)" in res.output

    train = runner.invoke(cli, world.train_args(out, tmp_path / "run", epochs=1, steps=1))
    line = _one_line_error(train)
    assert "chunk of block" in line and "rerun the dump-teacher command" in line
    for args in (["info", str(out)], ["export", str(out), str(tmp_path / "c.h5")]):
        line = _one_line_error(runner.invoke(cli, args))
        assert "chunk of block" in line and "rerun the dump-teacher command" in line, args
    assert not (tmp_path / "c.h5").exists()

    res = runner.invoke(cli, world.dump_args(out))
    assert res.exit_code == 0, res.output
    assert f"{len(injected)} damaged chunks" in res.output
    assert_stores_equal(out, world.reference)
    assert runner.invoke(cli, ["verify", str(out), "--integrity-only"]).exit_code == 0
