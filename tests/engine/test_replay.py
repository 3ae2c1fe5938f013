"""The core invariant: a student replaying a view from its recorded parameters sees exactly
what the teacher saw, so teacher(replayed view) reproduces the cached logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdcache._views import ReplayViews, identity_collate
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.cache._info import label_agreement
from kdcache.cache._targets import TOPK_STEP, decode_targets
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, build_teacher, dump_teacher
from kdcache.train._schedule import epoch_views

FP16_RTOL = 2.0 ** -10  # float16 keeps 10 mantissa bits


def _dump(tiny_h5, teacher, out, *, workers, view=None, targets="full", views=3, block_size=16):
    cfg = DumpConfig(data=DataConfig(source=tiny_h5), out=str(out), teacher=TeacherSpec(weights=teacher),
                     views=views, seed=7, targets=targets, view={"size": 16, **(view or {})},
                     batch_size=8, workers=workers, block_size=block_size)
    return dump_teacher(cfg, progress=False, log=lambda _m: None)


def _replay_logits(store: CacheStore, teacher_path: str, tiny_h5: str, *, workers: int, batch_size: int,
                   epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits on the epoch's replayed views, and the cached logits of the same views."""
    ds = DataConfig(source=tiny_h5).open()
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    views = epoch_views(store.done_units(), epoch=epoch, seed=0)
    arrays = store.read_views(views)
    cached = arrays.pop("logits")
    replay = ReplayViews(ds, pipeline, arrays)
    loader = DataLoader(replay, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=identity_collate)
    teacher = build_teacher(TeacherSpec(weights=teacher_path), num_classes=ds.num_classes).model
    out = np.zeros_like(cached, dtype=np.float32)
    with torch.inference_mode():
        for batch in loader:
            out[batch.indices] = teacher(batch.images).numpy()
    return out, cached.astype(np.float32)


@pytest.mark.parametrize("dump_workers,replay_workers,replay_batch", [(0, 2, 5), (1, 0, 7), (2, 1, 16)])
def test_teacher_on_replayed_views_matches_cache(tmp_path, tiny_h5, tiny_teacher, dump_workers, replay_workers,
                                                 replay_batch):
    _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", workers=dump_workers)
    store = CacheStore.open(str(tmp_path / "c.zarr"))
    for epoch in range(2):
        replayed, cached = _replay_logits(store, tiny_teacher, tiny_h5, workers=replay_workers,
                                          batch_size=replay_batch, epoch=epoch)
        tol = FP16_RTOL * np.abs(replayed).max() + 1e-3
        assert np.abs(replayed - cached).max() <= tol
        assert (replayed.argmax(1) == store.read_views(epoch_views(store.done_units(), epoch=epoch, seed=0),
                                                       names=["argmax"])["argmax"]).all()


def test_replayed_view_differs_from_another_view(tmp_path, tiny_h5, tiny_teacher):
    """Guards the test above: a wrong view (or un-augmented image) would not match the cache."""
    _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", workers=0)
    store = CacheStore.open(str(tmp_path / "c.zarr"))
    ds = DataConfig(source=tiny_h5).open()
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    teacher = build_teacher(TeacherSpec(weights=tiny_teacher), num_classes=3).model
    v0 = store.read_views([0] * store.num_blocks)
    v1 = store.read_views([1] * store.num_blocks)
    with torch.inference_mode():
        x = ReplayViews(ds, pipeline, v1).__getitems__(list(range(len(ds)))).images
        wrong = teacher(x).numpy()
    assert np.abs(wrong - v0["logits"].astype(np.float32)).max() > 1e-2


def test_dumps_with_different_worker_counts_are_identical(tmp_path, tiny_h5, tiny_teacher):
    for w in (0, 2):
        _dump(tiny_h5, tiny_teacher, tmp_path / f"w{w}.zarr", workers=w)
    a, b = CacheStore.open(str(tmp_path / "w0.zarr")), CacheStore.open(str(tmp_path / "w2.zarr"))
    for name in a.view_array_names + ["done"]:
        assert np.array_equal(a.array(name)[:], b.array(name)[:]), name


@pytest.mark.parametrize("mix", ["mixup", "cutmix", "both"])
def test_replay_exactness_holds_for_mixed_views(tmp_path, tiny_h5, tiny_teacher, mix):
    _dump(tiny_h5, tiny_teacher, tmp_path / "m.zarr", workers=1, view={"mix": mix})
    store = CacheStore.open(str(tmp_path / "m.zarr"))
    kinds = store.array("mix_kind")[:]
    assert (kinds > 0).any()  # mixing really happened
    replayed, cached = _replay_logits(store, tiny_teacher, tiny_h5, workers=0, batch_size=9, epoch=1)
    assert np.abs(replayed - cached).max() <= FP16_RTOL * np.abs(replayed).max() + 1e-3


def test_topk_cache_holds_the_teachers_top_logits(tmp_path, tiny_h5, tiny_teacher):
    _dump(tiny_h5, tiny_teacher, tmp_path / "full.zarr", workers=0)
    _dump(tiny_h5, tiny_teacher, tmp_path / "top2.zarr", workers=0, targets="topk:2")
    full, top = CacheStore.open(str(tmp_path / "full.zarr")), CacheStore.open(str(tmp_path / "top2.zarr"))
    logits = full.array("logits")[:].astype(np.float32)
    decoded = decode_targets({n: torch.from_numpy(top.array(n)[:]) for n in top.layout.target_names})
    idx = decoded["topk_indices"].long().numpy()
    vals = decoded["topk_values"].numpy()  # relative to the top logit, quantised in steps of TOPK_STEP
    picked = np.take_along_axis(logits, idx, axis=2)
    rel = picked - picked[..., :1]
    assert np.abs(rel - vals).max() <= TOPK_STEP / 2 + FP16_RTOL * np.abs(logits).max()
    assert np.array_equal(idx[..., 0], full.array("argmax")[:])
    assert np.array_equal(decoded["argmax"].numpy(), idx[..., 0])
    # `info`'s teacher-label agreement reads the first top-k index where no argmax is stored
    assert "argmax" not in top.layout.names
    assert label_agreement(top, top.done()) == label_agreement(full, full.done()) is not None
    # the tail log-sum-exp is the remaining class's logit (C=3, K=2), stored relative to the top logit
    rest = logits.sum(2) - picked.sum(2)
    assert np.allclose(decoded["topk_tail_lse"].numpy(), rest - picked[..., 0], atol=2e-2)
