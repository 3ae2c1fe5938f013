"""Stratified, seeded subsets (``limit=``) and the manifest hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcache.data import open_dataset, stratified_subset
from kdcache.data._subset import apportion
from kdcache.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def class_ordered(make_h5, counts, *, name="data.h5", flip=None):
    """An HDF5 split stored class by class (like the shared CIFAR file)."""
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    if flip is not None:
        y[flip] = (y[flip] + 1) % len(counts)
    x = np.random.default_rng(0).integers(0, 256, size=(len(y), 4, 4, 3), dtype=np.uint8)
    return make_h5({"train": (x, y, [f"s{i:03d}.png" for i in range(len(y))])}, name=name), x


def test_limit_is_proportional_per_class_and_keeps_keys(make_h5):
    path, x = class_ordered(make_h5, [40, 30, 20, 10])
    full = open_dataset(f"hdf5:{path}")
    sub = open_dataset(f"hdf5:{path}", limit=10, subset_seed=5)
    assert len(sub) == 10
    assert np.bincount(sub.labels, minlength=4).tolist() == [4, 3, 2, 1]
    assert sub.class_names == full.class_names
    position = {k: i for i, k in enumerate(full.keys)}
    chosen = [position[k] for k in sub.keys]
    assert chosen == sorted(chosen)  # deterministic order: the storage order
    for j, i in enumerate(chosen):
        assert sub.labels[j] == full.labels[i]
        assert torch.equal(sub.get_image(j), full.get_image(i))
        assert torch.equal(sub[j][0], torch.from_numpy(x[i]).permute(2, 0, 1))


def test_limit_is_seeded(make_h5):
    path, _ = class_ordered(make_h5, [25, 25, 25])
    a = open_dataset(f"hdf5:{path}", limit=9, subset_seed=1)
    b = open_dataset(f"hdf5:{path}", limit=9, subset_seed=1)
    c = open_dataset(f"hdf5:{path}", limit=9, subset_seed=2)
    assert a.keys == b.keys and a.manifest_hash() == b.manifest_hash()
    assert a.keys != c.keys
    assert np.bincount(c.labels).tolist() == [3, 3, 3]


def test_limit_does_not_depend_on_storage_order():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    keys = [f"k{i}" for i in range(8)]
    pick = stratified_subset(labels, keys, 4, seed=3)
    perm = np.array([7, 2, 5, 0, 6, 1, 3, 4])
    pick_perm = stratified_subset(labels[perm], [keys[p] for p in perm], 4, seed=3)
    assert {keys[i] for i in pick} == {keys[perm[i]] for i in pick_perm}


def test_limit_at_least_len_keeps_everything(make_h5):
    path, _ = class_ordered(make_h5, [3, 2])
    full = open_dataset(f"hdf5:{path}")
    for limit in (5, 6, 1000):
        sub = open_dataset(f"hdf5:{path}", limit=limit, subset_seed=9)
        assert sub.keys == full.keys and sub.manifest_hash() == full.manifest_hash()


def test_small_classes_are_not_dropped(make_h5):
    path, _ = class_ordered(make_h5, [97, 2, 1])
    sub = open_dataset(f"hdf5:{path}", limit=10)
    counts = np.bincount(sub.labels, minlength=3)
    assert counts.sum() == 10 and counts.min() >= 1 and counts[0] >= 8


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
       st.integers(1, 800))
def test_apportion_properties(counts, limit):
    counts = np.array(counts)
    quota = apportion(counts, limit)
    total = counts.sum()
    assert quota.sum() == min(limit, total)
    assert (quota >= 0).all() and (quota <= counts).all()
    if limit >= (counts > 0).sum():
        assert (quota[counts > 0] >= 1).all()
    exact = counts * min(limit, total) / total
    # Proportional up to rounding, plus at most one sample per rescued class.
    assert np.abs(quota - exact).max() < 1 + (counts > 0).sum()


@pytest.mark.parametrize("limit", [0, -3, True, 2.5])
def test_bad_limit(limit):
    with pytest.raises(DataError, match="limit must be a positive integer"):
        open_dataset("digits", limit=limit)


def test_manifest_hash_identifies_keys_labels_and_order(make_h5, make_folder):
    path_a, _ = class_ordered(make_h5, [3, 3], name="a.h5")
    path_b, _ = class_ordered(make_h5, [3, 3], name="b.h5")
    path_c, _ = class_ordered(make_h5, [3, 3], name="c.h5", flip=[4])
    a, b, c = (open_dataset(f"hdf5:{p}") for p in (path_a, path_b, path_c))
    assert a.manifest_hash() == b.manifest_hash()  # same samples, other file
    assert a.manifest_hash() != c.manifest_hash()  # one label changed
    assert a.select(range(5, -1, -1)).manifest_hash() != a.manifest_hash()  # other order
    # Another source with the same keys and labels has the same identity.
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    root = make_folder({"a/x.png": img, "b/y.png": img})
    folder = open_dataset(f"folder:{root}")
    h5 = make_h5({"train": (np.zeros((2, 2, 2, 3), np.uint8), np.array([0, 1]), ["a/x.png", "b/y.png"])},
                 name="same.h5")
    assert folder.manifest_hash() == open_dataset(f"hdf5:{h5}").manifest_hash()
    with pytest.raises(DataError, match="positions repeat a sample"):
        a.select([0, 1, 0])
    d = a.describe()
    assert d == {"source": f"hdf5:{path_a}", "split": "train", "num_samples": 6, "num_classes": 2,
                 "class_names": ["0", "1"], "manifest_sha256": a.manifest_hash()}
