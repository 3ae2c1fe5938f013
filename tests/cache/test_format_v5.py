"""Format 5 (added teachers) stays readable, and caches of earlier formats take teachers without changing.

``tests/fixtures/v5_teachers_cache.zarr`` was made at commit 9447744 with ``tests/fixtures/v1_teacher.pt`` over
``make_h5``'s tiny dataset (2 views, seed 3, 16 px, blocks of 16), and a teacher ``t2`` added over its views:
``cnn_tiny`` initialised with seed 7, targets ``full+pooled:int8``. A later kdcache must keep reading it: the
teacher's group, its views (the main group's), its replay, and a student's dataset of both teachers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from kdcache import CacheDataset
from kdcache.cache import CacheStore
from kdcache.cache._teachers import open_teacher, teacher_names
from kdcache.data import DataConfig
from kdcache.engine import AddTeacherConfig, TeacherSpec, add_teacher
from kdcache.engine._verify import verify_cache, verify_integrity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T2 = TeacherSpec(name="cnn_tiny", random_init=True, init_seed=7)


def test_the_committed_format_5_cache_reads_replays_and_feeds_a_dataset(tmp_path, tiny_h5):
    cache = str(tmp_path / "v5.zarr")
    shutil.copytree(FIXTURES / "v5_teachers_cache.zarr", cache)
    root = CacheStore.open(cache)
    assert root.attrs["kdcache_format"] == 3 and teacher_names(cache) == ["main", "t2"]
    t2 = open_teacher(root, "t2")
    assert t2.attrs["kdcache_format"] == 5 and t2.attrs["views_of"] == root.identity.fingerprint
    assert str(t2.target_mode) == "full+pooled:int8" and t2.layout.embedding_dim == 32
    assert verify_integrity(cache)["ok"]
    data = DataConfig(source=tiny_h5)
    r = verify_cache(cache, T2, data, name="t2", samples=48, device="cpu")
    assert r["ok"] and r["samples_checked"] == 48, r["failures"]
    assert verify_cache(cache, TeacherSpec(weights=str(FIXTURES / "v1_teacher.pt")), data, samples=16,
                        device="cpu")["ok"]
    ds = CacheDataset(cache, data, teachers=["main", "t2"])
    item = ds[5]
    assert set(item["targets"]) == {"main", "t2"} and item["targets"]["t2"]["embedding"].shape == (32,)
    assert torch.isfinite(item["targets"]["t2"]["logits"]).all()


def test_a_format_2_cache_takes_a_teacher_and_stays_format_2(tmp_path, tiny_h5):
    """The mixed-views fixture (MixUp/CutMix partners replayed too): its main group is not rewritten."""
    cache = str(tmp_path / "v2.zarr")
    shutil.copytree(FIXTURES / "v2_mixed_cache.zarr", cache)
    before = (Path(cache) / "zarr.json").read_bytes()
    s = add_teacher(AddTeacherConfig(cache=cache, name="t2", teacher=T2, data=DataConfig(source=tiny_h5),
                                     workers=0, device="cpu"), progress=False, log=lambda _m: None)
    assert s.done_fraction == 1.0
    assert (Path(cache) / "zarr.json").read_bytes() == before
    root = CacheStore.open(cache)
    assert root.attrs["kdcache_format"] == 2 and open_teacher(root, "t2").attrs["kdcache_format"] == 5
    r = verify_cache(cache, T2, DataConfig(source=tiny_h5), name="t2", samples=48, device="cpu")
    assert r["ok"] and r["argmax_agreement"] == 1.0, r["failures"]
