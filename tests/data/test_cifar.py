"""``cifar10:ROOT`` through torchvision, offline.

The working path uses a tiny fake ``cifar-10-batches-py`` directory. torchvision checks the
real files' md5 sums, which fake files cannot match, so ``check_integrity`` is monkeypatched
to accept them; everything else (unpickling, reshaping, class names) is torchvision's own.
The offline path monkeypatches torchvision's download function to fail like a machine
without network; no test touches the network.
"""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from kdcache.data import open_dataset
from kdcache.errors import DataError, DownloadUnavailableError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar(root: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write python batches like the real archive; returns the NHWC images and labels per split."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    names = [n for n, _ in tv_cifar.CIFAR10.train_list] + [n for n, _ in tv_cifar.CIFAR10.test_list]
    for b, name in enumerate(names):
        nchw = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        with open(base / name, "wb") as f:
            pickle.dump({"data": nchw.reshape(per_batch, -1), "labels": labels}, f)
        imgs, labs = splits["test" if name == "test_batch" else "train"]
        imgs.append(nchw.transpose(0, 2, 3, 1))
        labs.extend(labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)
    return {s: (np.concatenate(i), lab) for s, (i, lab) in splits.items()}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", refuse)


def test_reads_present_files(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    expected = write_fake_cifar(tmp_path)
    for split, n in (("train", 15), ("test", 3)):
        ds = open_dataset(f"cifar10:{tmp_path}", split)
        x, y = expected[split]
        assert len(ds) == n and ds.class_names == CLASSES and ds.split == split
        assert ds.keys == [f"{split}/{i}" for i in range(n)]
        assert ds.labels.tolist() == y
        assert ds.image_size(0) == (32, 32)
        for i, image in enumerate(ds.get_images(range(n))):
            assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(x[i]).permute(2, 0, 1))
    sub = open_dataset(f"cifar10:{tmp_path}", limit=10, subset_seed=1)
    assert sorted(sub.labels.tolist()) == list(range(10))


def test_pickle_drops_the_array_and_reloads(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    write_fake_cifar(tmp_path, per_batch=40)
    ds = open_dataset(f"cifar10:{tmp_path}")
    blob = pickle.dumps(ds)
    assert len(blob) < ds._data.nbytes / 4
    clone = pickle.loads(blob)
    assert clone._data is None
    assert torch.equal(clone.get_image(123), ds.get_image(123))
    again = pickle.loads(blob).preload()
    assert again._data is not None and np.array_equal(again._data, ds._data)


def test_offline_download_fails_with_one_line_hint(tmp_path, no_network):
    with pytest.raises(DownloadUnavailableError) as info:
        open_dataset(f"cifar10:{tmp_path / 'cifar' / 'sub'}")
    assert not (tmp_path / "cifar").exists()  # the folders made for the download are gone again
    message = str(info.value)
    assert "\n" not in message
    assert "could not download CIFAR-10" in message and "name resolution" in message
    assert "hdf5:" in message and "folder:" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_corrupt_files_are_a_data_error(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)  # real md5 check fails: as if the files were corrupt
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", lambda *a, **k: None)
    with pytest.raises(DataError, match="CIFAR-10 files in .* are missing or corrupt"):
        open_dataset(f"cifar10:{tmp_path}")


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match=r"no split 'val'; available splits: train, test"):
        open_dataset(f"cifar10:{tmp_path}", "val")
