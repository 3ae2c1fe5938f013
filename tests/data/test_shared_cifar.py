"""The real shared CIFAR-10 HDF5 file (skipped when it is absent)."""

from __future__ import annotations

import h5py
import numpy as np
import torch

from kdcache.data import open_dataset

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_shared_cifar_splits_and_subset(shared_cifar):
    train = open_dataset(f"hdf5:{shared_cifar}")
    assert len(train) == 50000 and train.class_names == CLASSES and train.num_classes == 10
    assert train.keys[0] == "airplane/0000.jpg" and len(set(train.keys)) == 50000
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert train.image_size(49999) == (32, 32)

    # The file is ordered by class: a limited subset must still hold every class, evenly.
    test = open_dataset(f"hdf5:{shared_cifar}", "test", limit=50, subset_seed=0)
    assert len(test) == 50 and np.bincount(test.labels, minlength=10).tolist() == [5] * 10
    assert all(key.startswith(CLASSES[label] + "/") for key, label in zip(test.keys, test.labels))
    images = test.get_images(range(len(test)))
    assert all(im.dtype == torch.uint8 and im.shape == (3, 32, 32) for im in images)
    with h5py.File(shared_cifar, "r") as f:
        names = [n.decode() for n in f["test/filenames"][()]]
        direct = f["test/images"][names.index(test.keys[7])]
    assert torch.equal(images[7], torch.from_numpy(direct).permute(2, 0, 1))
