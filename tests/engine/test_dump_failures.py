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
    with pytest.raises(CacheError, match=r"No space left on device writing .*c\.zarr \(.* free there now.*"
                                         r"free space on that filesystem.*rerun the same command to resume"):
        dump_teacher(_cfg(tiny_h5, tiny_teacher, out), progress=False, log=lambda _m: None)
    assert not (tmp_path / "c.zarr.locks").exists()  # the failed writer released its lock
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


def _folder_with_bad_image(root, bad: str):
    """6 PNGs in 3 classes plus one corrupt JPEG at ``bad`` (class/name)."""
    from PIL import Image

    for i, cls in enumerate("aabbcc"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    (root / bad).write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return f"folder:{root}"


@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
@pytest.mark.parametrize("bad,done", [("a/0_bad.jpg", 0), ("c/9_bad.jpg", 3)])
def test_a_corrupt_image_removes_an_empty_cache_or_keeps_finished_units(tmp_path, tiny_teacher, bad, done):
    """7 samples in blocks of 2, one view. The bad file is the first sample (nothing done: the new cache
    is removed) or the last (blocks 0-2 done: kept, and the message says the dump resumes)."""
    from kdcache.errors import DataError

    data = _folder_with_bad_image(tmp_path / "imgs", bad)
    out = tmp_path / "c.zarr"
    cfg = DumpConfig(data=DataConfig(source=data), out=str(out), teacher=TeacherSpec(weights=tiny_teacher),
                     views=1, view={"size": 16}, workers=0, block_size=2, batch_size=2)
    with pytest.raises(DataError) as info:
        dump_teacher(cfg, progress=False, log=lambda _m: None)
    msg = str(info.value)
    assert "\n" not in msg and bad in msg and ("cannot decode image" in msg or "cannot read image" in msg)
    assert not (tmp_path / "c.zarr.locks").exists()  # any failing writer releases its locks (issue 29)
    if done == 0:
        assert "nothing was computed" in msg and "was removed" in msg
        assert not out.exists()
    else:
        assert f"{done} of 4 units are done and kept" in msg and "rerun the same command to resume" in msg
        assert "once the cause is fixed" in msg  # the same rerun alone would hit the same image (issue 29)
        assert CacheStore.open(str(out)).done_units().sum() == done
