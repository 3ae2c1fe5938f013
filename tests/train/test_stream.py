"""Streamed targets: the epoch plan (windows of blocks, rank shares) and :class:`StreamedTargets`, which must
serve exactly the targets a whole-epoch read gives, hold at most two windows, read only a rank's blocks and
raise a damaged chunk in the batch that needs it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kdcache._views import ViewBatch
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CacheDamagedError
from kdcache.models import create_model
from kdcache.models._checkpoint import save_checkpoint
from kdcache.train import LossConfig, TrainConfig, _epochs, train_student
from kdcache.train._schedule import epoch_views
from kdcache.train._stream import (
    StreamedTargets,
    plan_epoch,
    store_window,
    window_blocks,
    window_class_coverage,
)
from tests.conftest import make_h5

CPU = torch.empty(0)


@pytest.fixture
def cache(make_cache) -> str:
    # 48 samples in blocks of 8: six blocks, three views
    return make_cache(3, 8)


def _batch(indices, slot=0) -> ViewBatch:
    idx = np.asarray(indices, dtype=np.int64)
    return ViewBatch(indices=idx, views=np.zeros_like(idx), seeds=np.zeros_like(idx), params=[], images=CPU,
                     slot=slot)


@pytest.mark.parametrize(("n", "block", "batch", "window", "world"),
                         [(48, 8, 8, 1, 1), (48, 8, 5, 2, 1), (50, 8, 6, 1, 3), (50, 8, 64, 1, 2), (7, 8, 3, 4, 1)])
def test_plan_covers_every_sample_once_in_windows_of_blocks(n, block, batch, window, world):
    plans = [plan_epoch(n, block, epoch=2, seed=5, batch_size=batch, window=window, rank=r, world_size=world)
             for r in range(world)]
    flat = [np.concatenate([np.asarray(b) for b in p.batches]) for p in plans]
    assert len({len(p.batches) for p in plans}) == 1          # every rank takes the same number of steps
    allidx = np.concatenate(flat)
    assert set(allidx.tolist()) == set(range(n)) and len(allidx) == -(-n // world) * world  # padding wraps
    for p, f in zip(plans, flat):
        # windows list, in order, the blocks of consecutive stretches of the rank's samples
        pos = 0
        for w, win in enumerate(p.windows):
            size = sum(win.values())
            assert size >= min(batch, len(f) - pos) or w == len(p.windows) - 1
            part = f[pos:pos + size]
            blocks, counts = np.unique(part // block, return_counts=True)
            assert dict(zip(blocks.tolist(), counts.tolist())) == win
            pos += size
        assert pos == len(f)
    if world == 1:  # the order is a seeded shuffle: another epoch, another order; the same epoch, the same
        again = plan_epoch(n, block, epoch=2, seed=5, batch_size=batch, window=window)
        other = plan_epoch(n, block, epoch=3, seed=5, batch_size=batch, window=window)
        assert again.batches == plans[0].batches and other.batches != plans[0].batches


def test_window_blocks_fits_two_windows_in_the_budget():
    assert window_blocks(100 << 20, 1 << 20, 1000) == 50
    assert window_blocks(1 << 20, 10 << 20, 1000) == 1      # never less than one block
    assert window_blocks(1 << 30, 1 << 20, 20) == 20        # never more than the cache has


def test_store_window_counts_the_stores_target_bytes(cache):
    store = CacheStore.open(cache, mode="r")
    # cnn_tiny teacher, 3 classes, full targets: float16 logits (3 x 2 B) + int8 argmax = 7 B a view
    assert store.layout.target_bytes_per_view == 7
    per_block = store.block_size * 7
    assert store_window(store, 1) == window_blocks(1 << 20, per_block, store.num_blocks) == store.num_blocks
    assert store_window(store, 1, slots=2) == store.num_blocks


@pytest.mark.parametrize(("window", "world", "m"), [(1, 1, 1), (2, 1, 2), (1, 2, 1), (6, 1, 1)])
def test_streamed_targets_equal_a_whole_epoch_read(cache, monkeypatch, window, world, m):
    store = CacheStore.open(cache, mode="r")
    names = store.layout.target_names
    views = [epoch_views(store.done_units(), epoch=e, seed=1) for e in range(m)]
    whole = [store.read_views(v, names=names) for v in views]
    read: list[int] = []
    original = store.read_units

    def spy(units, names=None):
        read.extend(b for b, _ in units)
        return original(units, names)

    monkeypatch.setattr(store, "read_units", spy)
    for rank in range(world):
        read.clear()
        plan = plan_epoch(store.num_samples, store.block_size, epoch=0, seed=1, batch_size=8, window=window,
                          rank=rank, world_size=world)
        source = StreamedTargets(store, views, names, plan)
        for b in plan.batches:
            for slot in range(m):
                got = source(_batch(b, slot), CPU)
                for k in names:
                    assert np.array_equal(got[k].numpy(), whole[slot][k][b]), (k, slot)
        source.close()
        # a rank reads its own blocks, each once per slot (no block is read twice)
        assert sorted(read) == sorted(plan.blocks * m)
        if world > 1:
            assert len(plan.blocks) < store.num_blocks
        # at most two windows resident (the one training and the one read ahead)
        assert source.peak_blocks <= 2 * max(len(w) for w in plan.windows) * m
        if window == 1 and world == 1:
            assert source.peak_blocks <= 2 * m < store.num_blocks * m


def test_a_damaged_chunk_stops_the_batch_that_needs_it(cache):
    store = CacheStore.open(cache, mode="r")
    names = store.layout.target_names
    views = [epoch_views(store.done_units(), epoch=0, seed=1)]
    plan = plan_epoch(store.num_samples, store.block_size, epoch=0, seed=1, batch_size=8, window=1)
    last_block = plan.windows[-1]
    b = next(iter(last_block))
    key = store.chunk_key(names[0], store.unit_chunk(names[0], b, int(views[0][b])))
    os.remove(os.path.join(cache, key))
    source = StreamedTargets(store, views, names, plan)
    with pytest.raises(CacheDamagedError, match=f"block {b}|samples {b * 8}"):
        for batch in plan.batches:
            source(_batch(batch), CPU)
    source.close()


def test_close_stops_the_reader_of_an_epoch_cut_short(cache):
    store = CacheStore.open(cache, mode="r")
    names = store.layout.target_names
    plan = plan_epoch(store.num_samples, store.block_size, epoch=0, seed=1, batch_size=8, window=1)
    source = StreamedTargets(store, [epoch_views(store.done_units(), epoch=0, seed=1)], names, plan)
    source(_batch(plan.batches[0]), CPU)
    source.close()
    assert source._thread is not None and not source._thread.is_alive()


def test_a_batch_out_of_the_plans_order_is_refused(cache):
    store = CacheStore.open(cache, mode="r")
    names = store.layout.target_names
    plan = plan_epoch(store.num_samples, store.block_size, epoch=0, seed=1, batch_size=8, window=1)
    source = StreamedTargets(store, [epoch_views(store.done_units(), epoch=0, seed=1)], names, plan)
    with pytest.raises(RuntimeError, match="out of the epoch plan's order"):
        source(_batch(plan.batches[1]), CPU)
    source.close()


def test_window_class_coverage_tells_data_ordered_by_class_from_mixed_data():
    by_class = np.repeat(np.arange(6), 8)                     # 48 samples in blocks of 8: one class a block
    small = plan_epoch(48, 8, epoch=0, seed=1, batch_size=4, window=1)
    share, mixed = window_class_coverage(small, by_class)
    assert share == pytest.approx(1 / 6) and mixed > 0.5      # each window one class; shuffled labels: most
    assert window_class_coverage(small, np.arange(48) % 6)[0] == 1.0
    whole = plan_epoch(48, 8, epoch=0, seed=1, batch_size=4, window=6)
    assert window_class_coverage(whole, by_class) == (1.0, 1.0)


@pytest.mark.parametrize("by_class", [True, False])
def test_train_student_warns_when_its_target_windows_hold_few_classes(tmp_path, tiny_teacher, monkeypatch, by_class):
    """A small --target-memory-mb over a cache of data ordered by class (an image folder) trains each window on
    a few classes: the run says so, with the budget that would hold the epoch. A labels-only run reads no
    targets and shuffles the whole epoch."""
    data = "hdf5:" + str(make_h5(tmp_path / "d.h5", n_train=96, classes=6, by_class=by_class))
    torch.manual_seed(1)
    teacher = str(tmp_path / "t6.pt")
    save_checkpoint(teacher, create_model("cnn_tiny", num_classes=6))
    cache = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=data), out=cache, teacher=TeacherSpec(weights=teacher), views=2,
                            view={"size": 16}, workers=0, block_size=16, device="cpu"), progress=False,
                 log=lambda _m: None)
    monkeypatch.setattr(_epochs, "store_window", lambda *_a: 1)  # a budget of one block (MB are too coarse here)
    for distill in ("soft", "none"):
        lines: list[str] = []
        train_student(TrainConfig(data=DataConfig(source=data), out=str(tmp_path / distill), model="cnn_tiny",
                                  cache=cache, epochs=1, batch_size=8, workers=0, val_split=None,
                                  loss=LossConfig(distill=distill)), progress=False, log=lines.append)
        warned = [m for m in lines if m.startswith("warning: a target window holds")]
        assert len(warned) == (1 if by_class and distill == "soft" else 0), lines
        if warned:
            assert "17% of the classes" in warned[0] and "fits 1 of 6 blocks" in warned[0], warned


@pytest.mark.parametrize(("views", "epochs", "warns"), [(1, 8, True), (2, 8, False), (1, 7, False)])
def test_train_student_warns_when_each_cached_view_is_replayed_many_times(tmp_path, tiny_h5, make_cache, views,
                                                                         epochs, warns):
    """V = 1 over 20 epochs lost 5.7 points to labels-only training in the accuracy table: from 8 replays of
    each view on, the run says so and names --add-views."""
    cache = make_cache(views, 16)
    lines: list[str] = []
    train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "run"), model="cnn_tiny",
                              cache=cache, epochs=epochs, batch_size=16, workers=0, val_split=None),
                  progress=False, log=lines.append)
    warned = [m for m in lines if m.startswith("warning:") and "--add-views" in m]
    assert len(warned) == warns, lines
    if warns:
        assert f"{epochs} epochs over 1 cached view(s) replay each view about 8 times" in warned[0]
