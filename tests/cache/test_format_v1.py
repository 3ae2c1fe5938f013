"""Format 1 stays readable: a format-1 cache is checked in (``tests/fixtures/v1_cache.zarr``).

It was made by kdcache 0.1 (commit 10f8055) with ``tests/fixtures/v1_teacher.pt`` over ``make_h5``'s tiny
dataset: 2 views, seed 3, 16 px, blocks of 16; ``v1_topk_cache.zarr`` the same with ``targets="topk:2"``
(float16 top-k values, raw tail log-sum-exp, stored argmax). The tests check:
- it opens, verifies and trains;
- extending it keeps its format;
- its stored ``view_seed`` values are exactly what ``derive_view_seed(seed, key, view)`` recomputes, the
  derivation that format 2 relies on instead of storing them;
- a new cache is format 3 (format 2 without the array; tests/cache/test_format_v2.py for format 2);
- the format-1 top-k cache reads back its raw float16 values, verifies, trains and grows in its own encoding.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from kdcache import CacheDataset
from kdcache.augment import derive_view_seed
from kdcache.cache import FORMAT_VERSION, CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.engine._verify import verify_cache
from kdcache.train import LossConfig, TrainConfig, train_student

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_format_1_cache_opens_verifies_trains_and_stays_format_1(tmp_path, tiny_h5):
    cache, data, teacher = str(tmp_path / "v1.zarr"), tiny_h5, str(FIXTURES / "v1_teacher.pt")
    shutil.copytree(FIXTURES / "v1_cache.zarr", cache)  # tiny_h5 is make_h5's dataset, the one it was made from
    store = CacheStore.open(cache)
    assert FORMAT_VERSION == 5 and store.attrs["kdcache_format"] == 1
    assert "view_seed" in store.layout.names and "view_seed" in store.layout.replay_names
    seeds = store.read_array("view_seed")
    assert seeds.shape == (48, 2)
    expected = [[derive_view_seed(store.identity.seed, k, v) for v in range(2)] for k in store.keys]
    assert np.array_equal(seeds, np.array(expected, dtype=np.int64))
    report = verify_cache(cache, TeacherSpec(weights=teacher), DataConfig(source=data), samples=48, device="cpu")
    assert report["ok"], report["failures"]
    train_student(TrainConfig(data=DataConfig(source=data), out=str(tmp_path / "run"), model="cnn_tiny", cache=cache,
                              epochs=1, batch_size=16, workers=0, val_split=None, device="cpu",
                              loss=LossConfig(distill="soft")), progress=False, log=lambda _m: None)
    # growing a format-1 cache writes its view seeds too (the array is there) and keeps format 1
    dump_teacher(DumpConfig(data=DataConfig(source=data), out=cache, teacher=TeacherSpec(weights=teacher),
                            add_views=1, view={"size": 16}, workers=0, block_size=16, device="cpu", seed=3),
                 progress=False, log=lambda _m: None)
    store = CacheStore.open(cache)
    assert store.attrs["kdcache_format"] == 1 and store.num_views == 3
    assert np.array_equal(store.read_array("view_seed")[:, 2],
                          [derive_view_seed(3, k, 2) for k in store.keys])
    assert verify_cache(cache, TeacherSpec(weights=teacher), DataConfig(source=data), samples=48,
                        device="cpu")["ok"]


def test_a_new_cache_is_format_3_without_view_seeds(tmp_path, make_cache):
    store = CacheStore.open(make_cache(2, 16))
    assert store.attrs["kdcache_format"] == 3
    assert "view_seed" not in store.layout.names and "view_seed" not in store.view_array_names


def test_a_format_1_topk_cache_keeps_its_float16_encoding(tmp_path, tiny_h5):
    cache, data, teacher = str(tmp_path / "v1k.zarr"), tiny_h5, str(FIXTURES / "v1_teacher.pt")
    shutil.copytree(FIXTURES / "v1_topk_cache.zarr", cache)
    store = CacheStore.open(cache)
    assert store.attrs["kdcache_format"] == 1 and str(store.target_mode) == "topk:2"
    assert set(store.layout.target_names) == {"topk_values", "topk_indices", "topk_tail_lse", "argmax"}
    raw = store.read_array("topk_values")
    ds = CacheDataset(cache, data, seed=0)
    item = ds[5]
    view = item["view"]
    assert torch.equal(item["targets"]["topk_values"], torch.from_numpy(raw[5, view].astype(np.float32)))
    assert int(item["targets"]["argmax"]) == int(store.read_array("argmax")[5, view])
    spec, dcfg = TeacherSpec(weights=teacher), DataConfig(source=data)
    assert verify_cache(cache, spec, dcfg, samples=48, device="cpu")["ok"]
    train_student(TrainConfig(data=dcfg, out=str(tmp_path / "run"), model="cnn_tiny", cache=cache, epochs=1,
                              batch_size=16, workers=0, val_split=None, device="cpu",
                              loss=LossConfig(distill="soft")), progress=False, log=lambda _m: None)
    dump_teacher(DumpConfig(data=dcfg, out=cache, teacher=spec, add_views=1, view={"size": 16}, workers=0,
                            block_size=16, device="cpu", seed=3, targets="topk:2"), progress=False, log=lambda _m: None)
    store = CacheStore.open(cache)
    assert store.attrs["kdcache_format"] == 1 and store.num_views == 3
    assert "topk_steps" not in store.view_array_names and store.read_array("topk_values").shape == (48, 3, 2)
    assert np.array_equal(store.read_array("topk_values")[:, :2], raw)  # the old views are untouched
    report = verify_cache(cache, spec, dcfg, samples=48, device="cpu")
    assert report["ok"], report["failures"]
    assert report["max_abs_diff"] <= report["atol"] <= 1e-2 + 1e-9  # float16 tolerance: no quantisation allowance
