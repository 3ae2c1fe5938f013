"""The Zarr store on its own: layout, completion, identity checks, growth and block reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from kdcache.cache import CacheIdentity, CacheStore, TargetMode, UnitLayout
from kdcache.cache._integrity import scan_cache
from kdcache.errors import (
    CacheDamagedError,
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheNotFoundError,
    ConfigError,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "cache-format.md"


def _identity(**kw) -> CacheIdentity:
    base = dict(teacher={"name": "t", "kwargs": {}, "weights_sha256": "ab"},
                dataset={"kind": "hdf5", "split": "train", "manifest_sha256": "cd"},
                view_spec={"size": 8}, seed=0, targets="full")
    base.update(kw)
    return CacheIdentity(**base)


def _create(path, *, n=10, views=2, classes=5, block=4, targets="full", **kw) -> CacheStore:
    return CacheStore.create(str(path), identity=_identity(targets=targets, **kw), keys=[f"k{i}" for i in range(n)],
                             labels=np.arange(n) % classes, num_classes=classes, num_views=views,
                             layout=UnitLayout.build(TargetMode.parse(targets), classes,
                                                     {"crop": ((4,), "int16"), "flip": ((), "bool")}),
                             attrs={"note": "test"}, block_size=block)


def _unit(store: CacheStore, block: int, value: float) -> dict[str, np.ndarray]:
    b0, b1 = store.block_bounds(block)
    n = b1 - b0
    return {"crop": np.full((n, 4), 3, np.int16),
            "flip": np.ones(n, bool), "logits": np.full((n, store.num_classes), value, np.float16),
            "argmax": np.zeros(n, np.int8)}


def test_layout_is_plain_zarr_and_documented(tmp_path):
    store = _create(tmp_path / "c.zarr")
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    doc = DOC.read_text()
    for attr in ("kdcache_format", "ready", "fingerprint", "identity", "num_samples", "num_views", "num_classes",
                 "targets", "block_size", "view_arrays"):
        assert attr in g.attrs, attr
        assert f"`{attr}`" in doc, f"attribute {attr} is not documented"
    documented = set(re.findall(r"^\| `(\w+)`", doc, flags=re.M))
    for name in g.array_keys():
        assert name in documented, f"array {name} is not in docs/cache-format.md"
    assert g["logits"].shape == (10, 2, 5) and g["logits"].dtype == np.float16
    assert g["logits"].chunks == (4, 1, 5) and g["done"].chunks == (4, 1)
    assert list(g["sample_key"][:3]) == ["k0", "k1", "k2"]
    assert json.loads(json.dumps(dict(g.attrs)))  # attributes are plain JSON
    assert store.identity.fingerprint == g.attrs["fingerprint"]


def test_units_are_done_only_after_write_and_resume_list_shrinks(tmp_path):
    store = _create(tmp_path / "c.zarr")
    assert store.num_blocks == 3 and store.block_bounds(2) == (8, 10)
    assert len(store.pending_units()) == 6
    store.write_unit(1, 0, _unit(store, 1, 1.5))
    assert (1, 0) not in store.pending_units() and len(store.pending_units()) == 5
    done = store.done()
    assert done[4:8, 0].all() and not done[:4].any() and not done[:, 1].any()
    again = CacheStore.open(str(tmp_path / "c.zarr"))
    assert np.array_equal(again.read_unit(1, 0)["logits"], np.full((4, 5), 1.5, np.float16))


def test_write_unit_refuses_incomplete_or_overflowing_arrays(tmp_path):
    store = _create(tmp_path / "c.zarr")
    bad = _unit(store, 0, 0.0)
    del bad["flip"]
    with pytest.raises(CacheError, match="missing"):
        store.write_unit(0, 0, bad)
    bad = _unit(store, 0, 0.0)
    bad["crop"] = np.full((4, 4), 40000, np.int32)
    with pytest.raises(CacheError, match="do not fit"):
        store.write_unit(0, 0, bad)
    assert not store.done().any()
    with pytest.raises(CacheError, match="read-only"):
        CacheStore.open(str(tmp_path / "c.zarr")).write_unit(0, 0, _unit(store, 0, 0.0))


def test_identity_mismatch_names_the_differing_part(tmp_path):
    store = _create(tmp_path / "c.zarr")
    other = _identity(seed=3, teacher={"name": "t", "kwargs": {}, "weights_sha256": "zz"})
    with pytest.raises(CacheMismatchError) as e:
        store.check_identity(other)
    assert "teacher.weights_sha256" in str(e.value) and "seed" in str(e.value)
    store.check_identity(_identity())  # the same identity passes


def test_fingerprint_ignores_view_count_but_not_targets():
    a = _identity()
    assert a.fingerprint == _identity().fingerprint
    assert a.fingerprint != _identity(targets="topk:2").fingerprint


def test_add_views_keeps_existing_views(tmp_path):
    store = _create(tmp_path / "c.zarr")
    for b in range(store.num_blocks):
        store.write_unit(b, 0, _unit(store, b, 2.0))
    before = store.array("logits")[:, 0]
    rw = CacheStore.open(str(tmp_path / "c.zarr"), mode="r+")
    assert rw.add_views(3) == 5
    reopened = CacheStore.open(str(tmp_path / "c.zarr"))
    assert reopened.num_views == 5 and reopened.attrs["num_views"] == 5
    assert np.array_equal(reopened.array("logits")[:, 0], before)
    assert reopened.done()[:, 0].all() and not reopened.done()[:, 1:].any()
    assert len(reopened.pending_units()) == 3 * 4


def test_read_views_gathers_the_chosen_view_per_block(tmp_path):
    store = _create(tmp_path / "c.zarr")
    for b in range(3):
        for v in range(2):
            store.write_unit(b, v, _unit(store, b, 10 * b + v))
    got = store.read_views([1, 0, 1], names=["logits"])["logits"][:, 0]
    assert np.array_equal(got, np.array([1] * 4 + [10] * 4 + [21] * 2, dtype=np.float16))
    with pytest.raises(CacheError):
        store.read_views([0, 0])


def test_local_reads_decode_like_zarr_and_catch_damage(tmp_path, monkeypatch):
    """read_units decodes local chunk files with the arrays' own codecs: the same arrays as zarr's path
    (partial last block, every dtype), and a flipped byte or a deleted file is damage, never data."""
    store = _create(tmp_path / "c.zarr")
    rng = np.random.default_rng(0)
    for b in range(3):
        for v in range(2):
            unit = _unit(store, b, 0.0)
            unit["logits"] = rng.standard_normal(unit["logits"].shape).astype(np.float16)
            unit["flip"] = rng.random(len(unit["flip"])) < 0.5
            store.write_unit(b, v, unit)
    units = [(b, v) for b in range(3) for v in range(2)]
    local = store.read_units(units)
    monkeypatch.setattr(CacheStore, "_local_root", lambda self: None)
    through_zarr = store.read_units(units)
    monkeypatch.undo()
    assert local.keys() == through_zarr.keys()
    for u in units:
        for name, a in through_zarr[u].items():
            assert local[u][name].dtype == a.dtype and np.array_equal(local[u][name], a), (u, name)
    assert len(local[2, 1]["logits"]) == 2  # the last block holds 2 samples
    chunk = tmp_path / "c.zarr" / store.chunk_key("logits", store.unit_chunk("logits", 1, 0))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CacheDamagedError, match="block 1, view 0 .*checksum mismatch"):
        store.read_units([(1, 0)], ["logits"])
    chunk.unlink()
    with pytest.raises(CacheDamagedError, match="block 1, view 0 is missing"):
        store.read_units([(1, 0)], ["logits"])


def test_open_errors(tmp_path):
    with pytest.raises(CacheNotFoundError):
        CacheStore.open(str(tmp_path / "missing.zarr"))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(CacheNotFoundError, match="not a kdcache cache"):
        CacheStore.open(str(tmp_path / "plain.zarr"))
    g = zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
    g.attrs.update({"kdcache_format": 1, "ready": False})
    with pytest.raises(CacheIncompleteError, match="interrupted"):
        CacheStore.open(str(tmp_path / "half.zarr"))


def test_memory_store_url(tmp_path):
    store = _create("memory://kdcache-test/c.zarr")
    store.write_unit(0, 1, _unit(store, 0, 4.0))
    again = CacheStore.open("memory://kdcache-test/c.zarr")
    assert again.done()[:4, 1].all() and again.nbytes_on_disk() is not None
    # integrity checks go through the store's own exists/list on URLs too
    assert not scan_cache(again).damage
    assert np.array_equal(again.read_unit(0, 1)["logits"], np.full((4, 5), 4.0, np.float16))
    import fsspec

    fsspec.filesystem("memory").rm("/kdcache-test/c.zarr/logits/c/0/1/0")
    with pytest.raises(CacheDamagedError, match=r"logits chunk of block 0, view 1 is missing .*"
                                                r"\[memory://kdcache-test/c.zarr/logits/c/0/1/0\]"):
        again.read_unit(0, 1)
    assert [(d.array, d.unit) for d in scan_cache(again).damage] == [("logits", (0, 1))]


def test_target_modes():
    assert str(TargetMode.parse("topk:5")) == "topk:5" and TargetMode.parse("FULL").kind == "full"
    specs = TargetMode.parse("topk:3").array_specs(1000)
    assert specs == {"topk_indices": ((3,), np.uint16), "topk_steps": ((2,), np.uint16), "topk_tail": ((), np.float16)}
    assert list(TargetMode.parse("topk:1").array_specs(10)) == ["topk_indices", "topk_tail"]  # no steps for K = 1
    assert TargetMode.parse("full").array_specs(1000)["argmax"][1] == np.int16
    for bad in ("topk:0", "top5", "topk:x"):
        with pytest.raises(ConfigError):
            TargetMode.parse(bad)
    with pytest.raises(ConfigError):
        TargetMode.parse("topk:11").check_classes(10)


def test_cache_made_before_checksums_stays_readable_and_names_undecodable_chunks(tmp_path, monkeypatch):
    """A format-1 cache from before checksums (no crc32c codec, chunks equal to the fill value not
    written, no ``checksums`` attribute) reads as before: a chunk zarr skipped is not damage there.
    A chunk that no longer decodes is still named."""
    import kdcache.cache._codecs as codecs

    path = str(tmp_path / "old.zarr")
    monkeypatch.setattr(codecs, "_COMPRESSORS", (codecs._COMPRESSOR,))
    monkeypatch.setattr(codecs, "_KEY_COMPRESSORS", (ZstdCodec(level=0),))
    monkeypatch.setattr(codecs, "WRITE_ALL", {"write_empty_chunks": False})
    _create(path)
    g = zarr.open_group(path, mode="r+")
    # as made before both (format 1: no seal, and no seal copy in done/zarr.json)
    g.attrs.put({**{k: v for k, v in g.attrs.items() if k not in ("checksums", "seal")}, "kdcache_format": 1})
    g["done"].attrs.put({})
    store = CacheStore.open(path, mode="r+")
    for b in range(store.num_blocks):
        store.write_unit(b, 0, _unit(store, b, 0.0))  # all-zero logits: zarr skips those chunks
    monkeypatch.undo()
    assert [c["name"] for c in json.loads((Path(path) / "logits" / "zarr.json").read_text())["codecs"]] == \
        ["bytes", "blosc"]
    assert not (Path(path) / "logits" / "c").exists() and not (Path(path) / "done" / "c" / "0" / "1").exists()

    store = CacheStore.open(path)
    assert not store.checksums
    assert store.done_units()[:, 0].all() and not store.done_units()[:, 1].any()
    assert not scan_cache(store).damage
    assert np.array_equal(store.read_views([0, 0, 0])["logits"], np.zeros((10, 5), np.float16))
    crop = Path(store.chunk_location("crop", store.unit_chunk("crop", 1, 0)))
    crop.write_bytes(crop.read_bytes()[:10])
    with pytest.raises(CacheDamagedError, match=r"crop chunk of block 1, view 0 is corrupt \(cannot be decoded"):
        store.read_views([0, 0, 0])
    assert [(d.array, d.unit, d.problem) for d in scan_cache(store).damage] == [("crop", (1, 0), "corrupt")]


def test_new_caches_carry_checksums_and_write_every_chunk(tmp_path):
    store = _create(tmp_path / "c.zarr")
    assert store.checksums and store.attrs["checksums"] is True
    for name in ("sample_key", "label", "logits", "done"):
        codecs = json.loads((tmp_path / "c.zarr" / name / "zarr.json").read_text())["codecs"]
        assert codecs[-1] == {"name": "crc32c"}, name
    # done exists whole from creation; a unit equal to the fill value is still written
    assert not store.missing_chunks("done", store.chunk_grid("done"))
    store.write_unit(0, 1, _unit(store, 0, 0.0))
    assert not store.missing_chunks("logits", [store.unit_chunk("logits", 0, 1)])
    assert store.missing_chunks("logits", [store.unit_chunk("logits", 1, 1)]) == [(1, 1, 0)]
    grown = store.add_views(1)
    assert grown == 3 and not store.missing_chunks("done", store.chunk_grid("done"), listing=True)
    assert not scan_cache(CacheStore.open(str(tmp_path / "c.zarr"))).damage


def test_views_being_added_read_as_not_done_until_their_count_is_recorded(tmp_path):
    """add_views resizes, writes the new done chunks, then records num_views: a reader opened in between
    sees the new views as not done (not as damage); once recorded, a missing done chunk is damage."""
    path = str(tmp_path / "c.zarr")
    store = _create(path)
    g = zarr.open_group(path, mode="r+")
    for name in [*store.view_array_names, "done"]:  # add_views interrupted right after its resizes
        g[name].resize((10, 3, *g[name].shape[2:]))
    mid = CacheStore.open(path)
    assert (mid.num_views, mid.settled_views) == (3, 2)
    assert not mid.done()[:, 2].any() and not scan_cache(mid).damage
    g.attrs["num_views"] = 3  # recorded without the done chunks: they were lost
    with pytest.raises(CacheDamagedError, match="done chunk of block 0, view 2 is missing"):
        CacheStore.open(path).done()
    assert {d.unit for d in scan_cache(CacheStore.open(path)).damage} == {(0, 2), (1, 2), (2, 2)}


def test_a_local_read_names_every_missing_chunk_and_a_corrupt_one(tmp_path):
    """Local reads open chunk files directly (the open is the existence check): at the first missing chunk
    every missing chunk of the read is named; a truncated one is named as corrupt."""
    store = _create(str(tmp_path / "c.zarr"))
    for b in range(store.num_blocks):
        for v in range(2):
            store.write_unit(b, v, _unit(store, b, float(b + v)))
    units = [(b, 0) for b in range(store.num_blocks)]
    assert set(store.read_units(units)) == set(units)
    for b in (1, 2):
        Path(store.chunk_location("logits", store.unit_chunk("logits", b, 0))).unlink()
    with pytest.raises(CacheDamagedError) as e:
        CacheStore.open(store.path).read_units(units)
    assert "logits chunk of block 1, view 0 is missing" in str(e.value) and "1 more damaged chunk" in str(e.value)
    crop = Path(store.chunk_location("crop", store.unit_chunk("crop", 0, 1)))
    crop.write_bytes(crop.read_bytes()[:10])
    with pytest.raises(CacheDamagedError, match=r"crop chunk of block 0, view 1 is corrupt"):
        CacheStore.open(store.path).read_units([(0, 1)])
