"""Dump failure paths in-process: full disk, fsspec stores."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CacheError


def _cfg(tiny_h5, teacher, out, **kw):
    base = dict(data=DataConfig(source=tiny_h5), out=str(out), teacher=TeacherSpec(weights=teacher), views=2,
                view={"size": 16}, workers=0, block_size=16, batch_size=16)
    base.update(kw)
    return DumpConfig(**base)


def test_full_disk_stops_with_a_clear_error_and_keeps_earlier_units(tmp_path, tiny_h5, tiny_teacher,
                                                                    monkeypatch):
    out = tmp_path / "c.zarr"
    real = CacheStore.write_unit
    calls = {"n": 0}

    def flaky(self, block, view, arrays):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, block, view, arrays)

    monkeypatch.setattr(CacheStore, "write_unit", flaky)
    with pytest.raises(CacheError, match="No space left on device.*rerun to resume"):
        dump_teacher(_cfg(tiny_h5, tiny_teacher, out), progress=False, log=lambda _m: None)
    store = CacheStore.open(str(out))
    assert store.done_units().sum() == 2 and len(store.pending_units()) == 4
    monkeypatch.setattr(CacheStore, "write_unit", real)
    dump_teacher(_cfg(tiny_h5, tiny_teacher, out), progress=False, log=lambda _m: None)
    dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "ref.zarr"), progress=False, log=lambda _m: None)
    a, b = CacheStore.open(str(out)), CacheStore.open(str(tmp_path / "ref.zarr"))
    for name in a.view_array_names + ["done"]:
        assert np.array_equal(a.array(name)[:], b.array(name)[:]), name


def test_dump_to_an_fsspec_url_equals_a_local_dump(tmp_path, tiny_h5, tiny_teacher):
    url = "memory://kdcache-dump-test/c.zarr"
    s = dump_teacher(_cfg(tiny_h5, tiny_teacher, url, targets="topk:2"), progress=False, log=lambda _m: None)
    assert s.done_fraction == 1.0
    dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "l.zarr", targets="topk:2"), progress=False,
                 log=lambda _m: None)
    a, b = CacheStore.open(url), CacheStore.open(str(tmp_path / "l.zarr"))
    assert a.identity == b.identity
    for name in a.view_array_names + ["done"]:
        assert np.array_equal(a.array(name)[:], b.array(name)[:]), name
