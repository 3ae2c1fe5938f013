"""The offline ``digits`` source: conversion, a deterministic stratified split, keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kdcache.data import open_dataset
from kdcache.data._digits import digits_split_indices
from kdcache.errors import DataError

# Golden value: the test split must never change between machines, processes or library
# versions, since caches are keyed on it. If this fails, the split algorithm changed.
DIGITS_TEST_MANIFEST = "38499e6d01e6a8b407c8211b916835f89cdbee2d5aeaf4ac471271ef587f8629"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.images, bunch.target


def test_splits_are_disjoint_cover_everything_and_stratified(digits):
    _, target = digits
    train = open_dataset("digits", "train")
    test = open_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert not set(train.keys) & set(test.keys)
    assert len(set(train.keys)) == len(train.keys)
    for cls in range(10):
        n = int((target == cls).sum())
        assert int((test.labels == cls).sum()) == round(0.2 * n)
        assert int((train.labels == cls).sum()) == n - round(0.2 * n)


def test_split_is_deterministic():
    a, b = open_dataset("digits", "test"), open_dataset("digits", "test")
    assert a.keys == b.keys and np.array_equal(a.labels, b.labels)
    assert a.manifest_hash() == b.manifest_hash() == DIGITS_TEST_MANIFEST


def test_images_are_scaled_rgb_with_original_keys_and_labels(digits):
    images, target = digits
    ds = open_dataset("digits", "train")
    assert ds.class_names == [str(d) for d in range(10)] and ds.num_classes == 10
    for i in (0, 1, 500, len(ds) - 1):
        original = int(ds.keys[i].split("/")[1])
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 8, 8)
        expected = np.rint(images[original] * 255 / 16).astype(np.uint8)
        for ch in range(3):
            assert np.array_equal(img[ch].numpy(), expected)
        assert label == target[original]
        assert ds.image_size(i) == (8, 8)
    assert ds.get_image(0).max() <= 255 and int(ds.get_images(range(len(ds)))[5].max()) > 200


def test_keys_are_zero_padded_original_indices(digits):
    _, target = digits
    idx = digits_split_indices(target, "train")
    ds = open_dataset("digits")
    assert ds.keys == [f"digits/{i:04d}" for i in idx]


def test_unknown_split_lists_available():
    with pytest.raises(DataError, match=r"no split 'val'.*train, test"):
        open_dataset("digits", "val")
