"""Property tests (hypothesis) for the store's completion bookkeeping and gathered reads, and the top-k rebuild."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdcache.cache import CacheIdentity, CacheStore, TargetMode, UnitLayout
from kdcache.errors import CacheDamagedError
from kdcache.train._losses import teacher_log_probs

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _store(path, n, views, block, classes=3) -> CacheStore:
    ident = CacheIdentity(teacher={"name": "t", "kwargs": {}, "weights_sha256": "0"},
                          dataset={"kind": "hdf5", "split": "train", "manifest_sha256": "0"},
                          view_spec={"size": 8}, seed=0, targets="full")
    layout = UnitLayout.build(TargetMode.parse("full"), classes, {"crop": ((4,), "int16"), "flip": ((), "bool")})
    return CacheStore.create(str(path), identity=ident, keys=[f"k{i}" for i in range(n)], labels=np.zeros(n),
                             num_classes=classes, num_views=views, layout=layout, attrs={}, block_size=block)


def _unit(store, b, v):
    b0, b1 = store.block_bounds(b)
    rows = np.arange(b0, b1)
    return {"crop": np.stack([rows, rows + v, rows, rows], 1).astype(np.int16),
            "flip": (rows + v) % 2 == 0, "logits": np.stack([rows + v * 0.5] * 3, 1).astype(np.float16),
            "argmax": np.full(b1 - b0, v % 3, np.int8)}


@SETTINGS
@given(n=st.integers(1, 23), views=st.integers(1, 4), block=st.integers(1, 9), data=st.data())
def test_done_units_pending_units_and_read_views_agree_with_what_was_written(tmp_path_factory, n, views, block,
                                                                           data):
    store = _store(tmp_path_factory.mktemp("c") / "c.zarr", n, views, block)
    units = [(b, v) for v in range(views) for b in range(store.num_blocks)]
    written = data.draw(st.sets(st.sampled_from(units)))
    for b, v in sorted(written):
        store.write_unit(b, v, _unit(store, b, v))
    du = store.done_units()
    assert du.shape == (store.num_blocks, views)
    assert {(b, v) for b in range(store.num_blocks) for v in range(views) if du[b, v]} == written
    pending = store.pending_units()
    assert set(pending) == set(units) - written
    assert pending == sorted(pending, key=lambda u: (u[1], u[0]))  # view-major
    # every sample row of a done unit is done, and nothing else
    done = store.done()
    for b in range(store.num_blocks):
        b0, b1 = store.block_bounds(b)
        for v in range(views):
            assert done[b0:b1, v].all() == ((b, v) in written) and done[b0:b1, v].any() == ((b, v) in written)
    # gathering one view per block returns exactly that unit's rows, in sample order; a unit never
    # written has no chunks, and reading it is an error that names it (never the fill value)
    choice = [data.draw(st.integers(0, views - 1)) for _ in range(store.num_blocks)]
    unwritten = [(b, v) for b, v in enumerate(choice) if (b, v) not in written]
    if unwritten:
        with pytest.raises(CacheDamagedError, match="block {}, view {} is missing".format(*unwritten[0])) as e:
            store.read_views(choice)
        assert {d.unit for d in e.value.damage} == set(unwritten)
        return
    got = store.read_views(choice)
    for b, v in enumerate(choice):
        b0, b1 = store.block_bounds(b)
        want = _unit(store, b, v)
        for name, arr in want.items():
            np.testing.assert_array_equal(got[name][b0:b1], arr.astype(got[name].dtype))


@settings(max_examples=60, deadline=None)
@given(c=st.integers(2, 12), data=st.data())
def test_topk_spread_is_exact_at_t1_and_renorm_is_softmax_over_the_top_k(c, data):
    k = data.draw(st.integers(1, c))
    logits = torch.tensor(data.draw(st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=c,
                                             max_size=c)))[None]
    full = torch.log_softmax(logits, 1)
    values, idx = torch.topk(logits, k, 1)
    tail = torch.logsumexp(logits.scatter(1, idx, float("-inf")), 1)
    t = {"topk_values": values, "topk_indices": idx, "topk_tail_lse": tail}
    spread = teacher_log_probs(t, c, 1.0, "spread")
    # exact: the kept classes' probabilities, and the tail's total mass
    assert torch.allclose(spread.gather(1, idx), full.gather(1, idx), atol=1e-5)
    kept = torch.zeros(c, dtype=torch.bool)
    kept[idx[0]] = True
    if k < c:
        assert math.isclose(float(spread[0, ~kept].exp().sum()), float(full[0, ~kept].exp().sum()), abs_tol=1e-5)
    renorm = teacher_log_probs(t, c, 2.0, "renorm")
    assert torch.allclose(renorm.exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(renorm.gather(1, idx), torch.log_softmax(values / 2.0, 1), atol=1e-5)
    assert torch.isneginf(renorm[0, ~kept]).all()
