"""The dump decodes each image once per block and draws all its pending views from that decode."""

from __future__ import annotations

import numpy as np
import pytest

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CacheError


def _cfg(data, teacher, out, **kw):
    base = dict(data=DataConfig(source=data), out=str(out), teacher=TeacherSpec(weights=teacher), views=4,
                view={"size": 16}, batch_size=8, workers=0, block_size=16, device="cpu")
    base.update(kw)
    return DumpConfig(**base)


def test_each_image_is_decoded_once_for_all_its_views(tmp_path, tiny_h5, tiny_teacher, decodes):
    s = dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "c.zarr"), progress=False, log=lambda _m: None)
    assert s.views_computed == 48 * 4
    assert set(decodes) == set(range(48)) and set(decodes.values()) == {1}
    # adding views decodes each image once more, for both new views together
    decodes.clear()
    dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "c.zarr", views=None, add_views=2), progress=False,
                 log=lambda _m: None)
    assert set(decodes.values()) == {1} and len(decodes) == 48


def test_batch_order_does_not_change_the_cache(tmp_path, tiny_h5, tiny_teacher):
    a = dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "a.zarr", batch_size=8), progress=False,
                     log=lambda _m: None)
    b = dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "b.zarr", batch_size=3), progress=False,
                     log=lambda _m: None)
    sa, sb = CacheStore.open(a.out), CacheStore.open(b.out)
    for name in sa.layout.names + ["done"]:
        x, y = np.asarray(sa.array(name)[...]), np.asarray(sb.array(name)[...])
        if np.issubdtype(x.dtype, np.floating):  # batch composition may move fp32 kernels by an ulp
            np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-2)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_a_failing_background_write_stops_the_dump_with_that_unit_not_done(tmp_path, tiny_h5, tiny_teacher,
                                                                          monkeypatch):
    calls = {"n": 0}
    original = CacheStore.write_unit

    def failing(self, block, view, arrays):
        calls["n"] += 1
        if calls["n"] == 6:  # block 1, view 1
            raise OSError(28, "No space left on device")
        return original(self, block, view, arrays)

    monkeypatch.setattr(CacheStore, "write_unit", failing)
    out = tmp_path / "c.zarr"
    with pytest.raises(CacheError, match=r"No space left on device writing .*c\.zarr .*; earlier units are intact"):
        dump_teacher(_cfg(tiny_h5, tiny_teacher, out), progress=False, log=lambda _m: None)
    du = CacheStore.open(str(out)).done_units()
    assert du[0].all() and du[1].tolist() == [True, False, False, False] and not du[2].any()
    monkeypatch.setattr(CacheStore, "write_unit", original)
    s = dump_teacher(_cfg(tiny_h5, tiny_teacher, out), progress=False, log=lambda _m: None)
    assert s.units_computed == 12 - 5 and s.done_fraction == 1.0


def test_eval_only_view_settings_are_not_part_of_the_cache_identity(tmp_path, tiny_h5, tiny_teacher):
    a = dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "a.zarr", views=1), progress=False, log=lambda _m: None)
    b = dump_teacher(_cfg(tiny_h5, tiny_teacher, tmp_path / "a.zarr", views=1, view={"size": 16, "crop_pct": 0.875}),
                     progress=False, log=lambda _m: None)  # the same cache: nothing to recompute
    assert a.fingerprint == b.fingerprint and b.views_computed == 0
    assert "crop_pct" not in CacheStore.open(a.out).identity.view_spec
