"""Pickling and DataLoader workers: no image arrays or open handles travel between processes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdcache.data import open_dataset
from kdcache.data._hdf5 import HDF5Dataset


@pytest.fixture
def h5_source(make_h5):
    x = np.random.default_rng(3).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    y = np.arange(40, dtype=np.int64) % 4
    return make_h5({"train": (x, y, None)}, chunk=8), x, y


def collect(ds, **loader_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(ds, batch_size=5, shuffle=False, **loader_kwargs)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("memory", [True, False], ids=["in-memory", "blocks"])
def test_forked_workers_return_the_same_images(h5_source, memory):
    path, x, y = h5_source
    ds = HDF5Dataset(path=path, in_memory_max_bytes=1 << 30 if memory else 0, cache_blocks=2)
    direct = torch.stack(ds.get_images(range(len(ds))))  # the parent reads (and, for blocks, holds the file)
    parent_handle = ds._h5
    images, labels = collect(ds, num_workers=2, multiprocessing_context="fork")
    assert torch.equal(images, direct)
    assert torch.equal(images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert torch.equal(labels, torch.from_numpy(y))
    # The parent's state is untouched by the workers and still reads.
    assert ds._h5 is parent_handle and ds._pid == os.getpid()
    assert torch.equal(ds.get_image(39), direct[39])


def test_preload_before_fork_means_workers_never_open_the_file(h5_source, tmp_path):
    path, x, _ = h5_source
    ds = open_dataset(f"hdf5:{path}").preload()
    assert ds.in_memory and ds._h5 is None
    moved = tmp_path / "moved.h5"
    path.rename(moved)  # a worker that tried to open the file would fail now
    images, _ = collect(ds, num_workers=2, multiprocessing_context="fork")
    assert torch.equal(images, torch.from_numpy(x).permute(0, 3, 1, 2))


def test_handle_is_reopened_after_fork(h5_source):
    path, x, _ = h5_source
    ds = HDF5Dataset(path=path, in_memory_max_bytes=0)
    ds.get_image(0)
    parent_pid = ds._pid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own handle, not reuse the parent's
        try:
            ds._blocks.clear()
            ok = torch.equal(ds.get_image(17), torch.from_numpy(x[17]).permute(2, 0, 1)) \
                and ds._pid == os.getpid() != parent_pid
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.waitpid(pid, 0)
    os.close(r)
    assert answer == b"1"


def test_pickle_carries_no_images_or_handles(h5_source):
    path, x, _ = h5_source
    ds = open_dataset(f"hdf5:{path}")
    ds.get_images(range(len(ds)))  # warm: the whole split is resident now
    blob = pickle.dumps(ds)
    assert len(blob) < x.nbytes / 4
    clone = pickle.loads(blob)
    assert clone._h5 is None and not clone._blocks and clone.in_memory is None
    assert clone.keys == ds.keys and clone.manifest_hash() == ds.manifest_hash()
    assert all(torch.equal(a, b) for a, b in zip(clone.get_images(range(40)), ds.get_images(range(40))))


def test_pickle_with_an_open_block_handle(h5_source):
    path, _, _ = h5_source
    ds = HDF5Dataset(path=path, in_memory_max_bytes=0)
    ds.get_image(5)
    assert ds._h5 is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.get_image(5), ds.get_image(5))


def test_subset_pickles_with_its_index(h5_source):
    path, _, _ = h5_source
    sub = open_dataset(f"hdf5:{path}", limit=8, subset_seed=2)
    clone = pickle.loads(pickle.dumps(sub))
    assert clone.keys == sub.keys and len(clone) == 8
    assert torch.equal(torch.stack(clone.get_images(range(8))), torch.stack(sub.get_images(range(8))))


def test_digits_in_forked_workers():
    ds = open_dataset("digits", "test", limit=20)
    images, labels = collect(ds, num_workers=2, multiprocessing_context="fork")
    assert torch.equal(images, torch.stack(ds.get_images(range(20))))
    assert np.array_equal(labels.numpy(), ds.labels)
