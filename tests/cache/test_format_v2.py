"""Format 2 stays readable and grows as before: a format-2 cache of mixed views is checked in.

``tests/fixtures/v2_mixed_cache.zarr`` was made by kdcache 0.1 at commit e7c51a2 (the last format-2 commit)
with ``tests/fixtures/v1_teacher.pt`` over ``make_h5``'s tiny dataset: 2 views, seed 3, 16 px, ``mix="both"``,
blocks of 16. Format 3 added per-sample ops (auto-augment, colour, erasing) and pad-crop; at their defaults
they must change nothing: not the identity (so the fingerprint still matches and the cache can grow), not the
order of the draws (so a view redrawn today has the recorded parameters), not the pixels (verify passes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kdcache.augment import ViewPipeline, ViewSpec, derive_view_seed
from kdcache.cache import CacheStore
from kdcache.cache._identity import CacheIdentity
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.engine._verify import verify_cache

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_format_2_mixed_cache_replays_redraws_and_grows_as_format_2(tmp_path, tiny_h5):
    cache, teacher = str(tmp_path / "v2.zarr"), str(FIXTURES / "v1_teacher.pt")
    shutil.copytree(FIXTURES / "v2_mixed_cache.zarr", cache)
    store = CacheStore.open(cache)
    assert store.attrs["kdcache_format"] == 2
    spec = ViewSpec.from_dict(store.identity.view_spec)
    # today's spec has the format-3 settings at their defaults: the identity, and so the fingerprint, is unchanged
    assert spec.replay_dict() == store.identity.view_spec
    assert CacheIdentity.from_dict(store.attrs["identity"]).fingerprint == store.attrs["fingerprint"]
    ds = DataConfig(source=tiny_h5).open()
    pipeline = ViewPipeline(spec)
    for v in range(2):
        arrays = store.read_views([v] * store.num_blocks, names=store.layout.replay_names)
        for i, key in enumerate(store.keys):
            redrawn = pipeline.make_params(derive_view_seed(3, key, v), ds.image_size(i), num_samples=len(ds),
                                           size_of=ds.image_size)
            assert redrawn == pipeline.params_from_arrays(arrays, i), (key, v)
    report = verify_cache(cache, TeacherSpec(weights=teacher), DataConfig(source=tiny_h5), samples=48, device="cpu")
    assert report["ok"], report["failures"]
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=cache, teacher=TeacherSpec(weights=teacher),
                            add_views=1, view={"size": 16, "mix": "both"}, workers=0, block_size=16, device="cpu",
                            seed=3), progress=False, log=lambda _m: None)
    store = CacheStore.open(cache)
    assert store.attrs["kdcache_format"] == 2 and store.num_views == 3
    report = verify_cache(cache, TeacherSpec(weights=teacher), DataConfig(source=tiny_h5), samples=48, device="cpu")
    assert report["ok"], report["failures"]
