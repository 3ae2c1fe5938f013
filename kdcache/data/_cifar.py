"""``cifar10:ROOT``: torchvision's CIFAR-10 (python batches in ``ROOT/cifar-10-batches-py``).

The files are used when present (torchvision verifies their md5s); otherwise torchvision
downloads them. Without a network that fails, and the failure becomes a one-line
:class:`~kdcache.errors.DownloadUnavailableError` pointing at the offline alternatives.

torchvision holds the whole split in memory (150 MB for train). That array is not pickled:
a spawned DataLoader worker reloads it from ``ROOT`` on first access. Keys are
``"{split}/{index}"``, the same convention as HDF5 files without filenames.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.data._dataset import ImageDataset, nhwc_to_tensors
from kdcache.errors import DataError, DownloadUnavailableError

__all__ = ["CIFAR10_SPLITS", "CIFAR10Dataset"]

CIFAR10_SPLITS = ("train", "test")


def _load(root: Path, split: str, *, download: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import CIFAR10

    # torchvision creates the root before downloading: a failed download must not leave it behind.
    missing = [p for p in (root, *root.parents) if not p.exists()]
    try:
        tv = CIFAR10(str(root), train=(split == "train"), download=download)
    except OSError as e:  # urllib.error.URLError, ConnectionError, timeouts
        for p in missing:  # deepest first; only directories this call made, and only while empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        reason = " ".join(str(getattr(e, "reason", e)).split())
        raise DownloadUnavailableError(
            f"could not download CIFAR-10 into {root} ({reason}); put the python batches in "
            f"{root}/cifar-10-batches-py, or use 'hdf5:PATH' or 'folder:PATH' data instead") from e
    except RuntimeError as e:  # torchvision: files missing or failing their md5 check
        raise DataError(f"CIFAR-10 files in {root} are missing or corrupt ({e}); delete "
                        f"{root}/cifar-10-batches-py and retry, or use 'hdf5:PATH' data instead") from e
    images = np.ascontiguousarray(tv.data, dtype=np.uint8)
    return images, np.asarray(tv.targets, dtype=np.int64), list(tv.classes)


class CIFAR10Dataset(ImageDataset):
    """A CIFAR-10 split read through ``torchvision.datasets.CIFAR10``."""

    same_size_images = True

    def __init__(self, *, root: str | os.PathLike[str], split: str = "train",
                 source: str | None = None) -> None:
        root = Path(root).expanduser()
        source = source if source is not None else f"cifar10:{root}"
        if split not in CIFAR10_SPLITS:
            raise DataError(f"CIFAR-10 has no split {split!r}; available splits: {', '.join(CIFAR10_SPLITS)}")
        images, labels, classes = _load(root, split, download=True)
        super().__init__(source=source, split=split, keys=[f"{split}/{i}" for i in range(len(labels))],
                         labels=labels, class_names=classes)
        self._root = root
        self._shape = tuple(int(s) for s in images.shape)
        self._data: np.ndarray | None = images

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None  # reloaded from ROOT by the receiving process
        return state

    def _array(self) -> np.ndarray:
        if self._data is None:
            self._data = _load(self._root, self.stored_split, download=False)[0]
        return self._data

    def preload(self) -> CIFAR10Dataset:
        self._array()
        return self

    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        return nhwc_to_tensors(self._array()[src])

    def _size(self, src_index: int) -> tuple[int, int]:
        return self._shape[1], self._shape[2]
