"""``hdf5:PATH``: layout, keys, block reads (in memory and through the LRU), bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from kdcache.data import open_dataset
from kdcache.data._hdf5 import HDF5Dataset
from kdcache.errors import DataError, DataNotFoundError


def images(n: int, h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


@pytest.fixture
def cifar_like(make_h5):
    """Two splits, class-ordered like the shared CIFAR file, chunks of 4 images."""
    train_x, test_x = images(18), images(6, seed=1)
    train_y = np.repeat(np.arange(3), 6).astype(np.int64)
    test_y = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)
    names = [f"c{label}/{i:02d}.png" for i, label in enumerate(train_y)]
    path = make_h5({"train": (train_x, train_y, names), "test": (test_x, test_y, None)},
                   class_names=["cat", "dog", "emu"])
    return path, train_x, train_y, names, test_x


class CountingDataset:
    """Wraps an h5py dataset and records every slice read from it."""

    def __init__(self, dset: h5py.Dataset, log: list) -> None:
        self._dset, self._log = dset, log

    def __getitem__(self, item):
        self._log.append(item)
        return self._dset[item]


def count_reads(monkeypatch, ds: HDF5Dataset) -> list:
    log: list = []
    original = HDF5Dataset._images
    monkeypatch.setattr(ds, "_images", lambda: CountingDataset(original(ds), log))
    return log


def test_reads_images_labels_keys_and_class_names(cifar_like):
    path, x, y, names, test_x = cifar_like
    ds = open_dataset(f"hdf5:{path}")
    assert len(ds) == 18 and ds.split == "train" and ds.source == f"hdf5:{path}"
    assert ds.keys == names
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, y)
    assert ds.class_names == ["cat", "dog", "emu"] and ds.num_classes == 3
    for i in (0, 5, 17, -1):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and torch.equal(img, chw(x[i]))
        assert label == y[i]
    assert ds.image_size(3) == (6, 5)
    test = open_dataset(f"hdf5:{path}", "test")
    assert test.keys == [f"test/{i}" for i in range(6)]
    assert torch.equal(test.get_image(2), chw(test_x[2]))


def test_class_names_default_to_label_strings(make_h5):
    path = make_h5({"train": (images(5), np.array([0, 3, 1, 3, 0]), None)})
    ds = open_dataset(f"hdf5:{path}")
    assert ds.class_names == ["0", "1", "2", "3"]


@pytest.mark.parametrize("memory", [True, False])
def test_get_images_equals_get_image(cifar_like, memory):
    path, x, *_ = cifar_like
    ds = HDF5Dataset(path=path, in_memory_max_bytes=1 << 30 if memory else 0, cache_blocks=2)
    order = [17, 0, 1, 2, 3, 4, 9, 9, 16, 5, 12]
    batch = ds.get_images(order)
    assert ds.in_memory is memory
    singles = [ds.get_image(i) for i in order]
    for i, a, b in zip(order, batch, singles):
        assert torch.equal(a, b) and torch.equal(a, chw(x[i]))
    assert ds.get_images([]) == []


def test_block_mode_reads_one_chunk_aligned_slice_per_run(cifar_like, monkeypatch):
    path, *_ = cifar_like
    ds = HDF5Dataset(path=path, in_memory_max_bytes=0, cache_blocks=8)
    log = count_reads(monkeypatch, ds)
    ds.get_images(range(1, 11))  # chunks 0..2: one run
    assert log == [slice(0, 12)]
    ds.get_images([2, 5])  # cached
    assert len(log) == 1
    ds.get_images([17, 13])  # chunk 3 and chunk 4 (the short tail)
    assert log[1:] == [slice(12, 18)]


def test_block_mode_lru_is_bounded(cifar_like, monkeypatch):
    path, x, *_ = cifar_like
    ds = HDF5Dataset(path=path, in_memory_max_bytes=0, cache_blocks=1)
    log = count_reads(monkeypatch, ds)
    ds.get_images([0, 17])  # two separate runs: chunk 0 and chunk 4
    assert log == [slice(0, 4), slice(16, 18)]
    assert len(ds._blocks) == 1
    assert torch.equal(ds.get_image(0), chw(x[0]))  # evicted, so read again
    assert len(log) == 3


def test_memory_mode_loads_needed_chunks_once_then_closes_file(cifar_like, monkeypatch):
    path, x, *_ = cifar_like
    ds = HDF5Dataset(path=path)
    log = count_reads(monkeypatch, ds)
    ds.get_image(7)
    assert log == [slice(0, 18)] and ds.in_memory
    for i in range(18):
        assert torch.equal(ds.get_image(i), chw(x[i]))
    assert len(log) == 1 and ds._h5 is None


def test_subset_loads_only_its_chunks(cifar_like, monkeypatch):
    path, x, *_ = cifar_like
    sub = HDF5Dataset(path=path).select([0, 1, 17])
    log = count_reads(monkeypatch, sub)
    assert torch.equal(sub.get_image(2), chw(x[17]))
    assert log == [slice(0, 4), slice(16, 18)]


def test_unchunked_images(make_h5):
    x = images(7)
    path = make_h5({"train": (x, np.zeros(7, dtype=np.int64), None)}, chunk=0)
    with h5py.File(path) as f:
        assert f["train/images"].chunks is None
    ds = HDF5Dataset(path=path, in_memory_max_bytes=0)
    assert all(torch.equal(a, chw(b)) for a, b in zip(ds.get_images([6, 0, 3]), x[[6, 0, 3]]))


def test_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="HDF5 file not found.*nope.h5"):
        open_dataset(f"hdf5:{tmp_path / 'nope.h5'}")


def test_not_an_hdf5_file(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("hello")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        open_dataset(f"hdf5:{bad}")


def test_unknown_split_lists_available(cifar_like):
    path, *_ = cifar_like
    with pytest.raises(DataError, match=r"no split 'val'; available splits: test, train"):
        open_dataset(f"hdf5:{path}", "val")


@pytest.mark.parametrize("bad", [
    images(4).astype(np.float32),
    images(4)[..., 0],
    np.concatenate([images(4), images(4)[..., :1]], axis=-1),
], ids=["float32", "no-channels", "four-channels"])
def test_wrong_image_dtype_or_shape(make_h5, bad):
    path = make_h5({"train": (bad, np.zeros(4, dtype=np.int64), None)})
    with pytest.raises(DataError, match=r"expected uint8 RGB images of shape \(N, H, W, 3\)"):
        open_dataset(f"hdf5:{path}")


def test_length_mismatch(make_h5):
    path = make_h5({"train": (images(4), np.zeros(3, dtype=np.int64), None)})
    with pytest.raises(DataError, match="4 images but 3 labels"):
        open_dataset(f"hdf5:{path}")
    path = make_h5({"train": (images(4), np.zeros(4, dtype=np.int64), ["a", "b"])}, name="f.h5")
    with pytest.raises(DataError, match="4 images but 2 filenames"):
        open_dataset(f"hdf5:{path}")


def test_float_labels(make_h5):
    path = make_h5({"train": (images(2), np.array([0.0, 1.0]), None)})
    with pytest.raises(DataError, match="labels.*1-D integer"):
        open_dataset(f"hdf5:{path}")


def test_labels_out_of_range_of_class_names(make_h5):
    path = make_h5({"train": (images(3), np.array([0, 1, 2]), ["x.png", "y.png", "z.png"])}, class_names=["a", "b"])
    with pytest.raises(DataError, match=r"sample 2 \('z.png'\) has label 2, outside the 2 classes"):
        open_dataset(f"hdf5:{path}")


def test_negative_labels(make_h5):
    path = make_h5({"train": (images(2), np.array([0, -1]), None)})
    with pytest.raises(DataError, match=r"sample 1 \('train/1'\) has negative label -1"):
        open_dataset(f"hdf5:{path}")
    path = make_h5({"train": (images(2), np.array([0, -1]), None)}, class_names=["a", "b"], name="n.h5")
    with pytest.raises(DataError, match="has label -1, outside the 2 classes"):
        open_dataset(f"hdf5:{path}")


def test_one_stray_label_does_not_make_a_thousand_classes(make_h5):
    """The issue's case: one label 999 among a 10-class file without class names is refused, naming it."""
    labels = np.arange(20) % 10
    labels[13] = 999
    path = make_h5({"train": (images(20), labels, None)})
    with pytest.raises(DataError, match=r"labels imply 1000 classes \(sample 13 \('train/13'\) has label 999\) "
                                        r"but 989 of them have no sample"):
        open_dataset(f"hdf5:{path}")
    # With the class count recorded, the same label is out of range, and the message names the sample.
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs["num_classes"] = 10
    with pytest.raises(DataError, match=r"sample 13 \('train/13'\) has label 999, outside the 10 classes"):
        open_dataset(f"hdf5:{path}")
    with h5py.File(path, "a") as f:
        f["train/labels"][13] = 3
        f.attrs["num_classes"] = 12  # two classes without samples are fine when the file says so
    assert open_dataset(f"hdf5:{path}").num_classes == 12
    with h5py.File(path, "a") as f:
        f.attrs["num_classes"] = 2.5
    with pytest.raises(DataError, match="num_classes must be a positive integer"):
        open_dataset(f"hdf5:{path}")


def test_duplicate_filenames(make_h5):
    path = make_h5({"train": (images(3), np.zeros(3, dtype=np.int64), ["a.png", "b.png", "a.png"])})
    with pytest.raises(DataError, match="key 'a.png' occurs more than once"):
        open_dataset(f"hdf5:{path}")


def test_index_out_of_range(cifar_like):
    path, *_ = cifar_like
    ds = open_dataset(f"hdf5:{path}")
    with pytest.raises(IndexError, match="index 18 is out of range"):
        ds[18]
    with pytest.raises(IndexError):
        ds.get_images([0, -19])
