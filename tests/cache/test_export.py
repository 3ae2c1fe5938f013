"""export_hdf5 / `kdcache export`: an exact, atomic HDF5 copy of a cache."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache.cache._export import ATTRS_ENCODING, _blocks, export_hdf5, read_hdf5_attrs
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CacheError, CacheNotFoundError, ConfigError
from kdcache.models import create_model
from kdcache.models._checkpoint import save_checkpoint


def _make_h5(path, n: int = 20) -> str:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["class_names"] = ["a", "b", "c"]
        f["train/images"] = rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
        f["train/labels"] = np.arange(n) % 3
    return f"hdf5:{path}"


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, str]:
    """A full cache with one unit left not-done, and a mixed top-k cache (all parameter arrays)."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    teacher = str(save_checkpoint(root / "t.pt", create_model("cnn_tiny", num_classes=3, width=4)))
    data = _make_h5(root / "d.h5")
    out = {}
    for name, targets, view in (("full", "full", {}), ("topk", "topk:2", {"mix": "both"})):
        cfg = DumpConfig(data=DataConfig(source=data), out=str(root / f"{name}.zarr"),
                         teacher=TeacherSpec(weights=teacher), views=3, targets=targets,
                         view={"size": 12, **view}, batch_size=8, workers=0, block_size=8)
        dump_teacher(cfg, progress=False, log=lambda _m: None)
        out[name] = cfg.out
    # Every chunk of a checksummed cache exists: write the fill value as a chunk, as kdcache does.
    zarr.open_group(out["full"], mode="r+")["done"].with_config({"write_empty_chunks": True})[8:16, 2] = False
    return out


def _assert_same(cache: str, h5: str) -> None:
    g = zarr.open_group(cache, mode="r")
    with h5py.File(h5, "r") as f:
        zarrays = dict(g.arrays())
        assert set(f.keys()) == set(zarrays)
        for name, za in zarrays.items():
            ds = f[name]
            assert ds.shape == za.shape and ds.chunks == za.chunks, name
            if name == "sample_key":
                assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
                assert list(ds.asstr()[:]) == [str(k) for k in za[:]]
            else:
                assert ds.dtype == za.dtype, name
                assert np.array_equal(ds[:], za[:], equal_nan=ds.dtype.kind == "f"), name
        assert f.attrs["kdcache_attrs_encoding"] == ATTRS_ENCODING
        attrs = read_hdf5_attrs(f)
        assert attrs == dict(g.attrs)
        assert isinstance(f.attrs["identity"], str) and json.loads(f.attrs["identity"]) == g.attrs["identity"]
        assert f.attrs["num_samples"] == g.attrs["num_samples"]  # scalars stay native


@pytest.mark.parametrize("name,compression", [("full", "gzip"), ("topk", "gzip"), ("topk", "lzf")])
def test_export_round_trip(tmp_path, caches, name, compression):
    out = tmp_path / "c.h5"
    s = export_hdf5(caches[name], out, compression=compression)
    assert s["out"] == str(out) and s["bytes"] == os.path.getsize(out)
    _assert_same(caches[name], str(out))
    with h5py.File(out, "r") as f:
        assert f["done"].compression == compression
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]  # no temporary file left behind


def test_export_keeps_damage_and_incompleteness_exactly(tmp_path, caches):
    g = zarr.open_group(caches["full"], mode="r")
    assert not np.asarray(g["done"][:]).all()
    export_hdf5(caches["full"], tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert np.array_equal(f["done"][:], g["done"][:])


def test_blocks_are_chunk_aligned_and_cover_the_array(caches, monkeypatch):
    import kdcache.cache._export as export

    arr = zarr.open_group(caches["full"], mode="r")["logits"]  # (20, 3, 3), chunks (8, 1, 3)
    monkeypatch.setattr(export, "_READ_BUDGET", 2 * 8 * 3 * 2)  # two chunks per read
    sels = list(_blocks(arr))
    seen = np.zeros(arr.shape[:2], dtype=int)
    for rows, cols in sels:
        assert rows.start % 8 == 0 and rows.stop - rows.start <= 8
        assert cols.stop - cols.start <= 2
        seen[rows, cols] += 1
    assert (seen == 1).all()


def test_existing_output_is_never_touched_without_overwrite(tmp_path, caches):
    out = tmp_path / "c.h5"
    out.write_bytes(b"precious")
    with pytest.raises(CacheError, match="`overwrite`"):
        export_hdf5(caches["full"], out)
    assert out.read_bytes() == b"precious"
    export_hdf5(caches["full"], out, overwrite=True)
    _assert_same(caches["full"], str(out))


def test_failed_export_leaves_no_file(tmp_path, caches, monkeypatch):
    import kdcache.cache._export as export

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_copy_array", boom)
    with pytest.raises(CacheError, match="cannot write .*c.h5: disk full; nothing was written"):
        export_hdf5(caches["full"], tmp_path / "c.h5")
    assert list(tmp_path.iterdir()) == []


def test_export_bad_input(tmp_path, caches):
    with pytest.raises(CacheNotFoundError):
        export_hdf5(str(tmp_path / "missing.zarr"), tmp_path / "c.h5")
    with pytest.raises(ConfigError):
        export_hdf5(caches["full"], tmp_path / "c.h5", compression="zip")
    with pytest.raises(CacheError, match="does not exist"):
        export_hdf5(caches["full"], tmp_path / "no" / "c.h5")
    with pytest.raises(CacheError, match="directory"):
        export_hdf5(caches["full"], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tmp_path, caches):
    out = str(tmp_path / "c.h5")
    res = CliRunner().invoke(cli, ["export", caches["topk"], out, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    _assert_same(caches["topk"], out)
    before = os.path.getmtime(out), open(out, "rb").read()
    res = CliRunner().invoke(cli, ["export", caches["full"], out])
    assert res.exit_code == 1 and "--overwrite" in res.output and "Traceback" not in res.output
    assert (os.path.getmtime(out), open(out, "rb").read()) == before
    res = CliRunner().invoke(cli, ["export", caches["full"], out, "--overwrite", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["arrays"]["logits"]["chunks"] == [8, 1, 3]
    _assert_same(caches["full"], out)


def test_cli_export_missing_cache(tmp_path):
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "nope.zarr"), str(tmp_path / "c.h5")])
    assert res.exit_code == 1
    assert "cache not found" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.h5").exists()
