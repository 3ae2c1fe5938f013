"""The dataset abstraction every source implements: :class:`ImageDataset`.

A dataset is an *index* (ordered keys, labels, class names) over a *source* that can
read images by source position. The index is what the teacher cache is keyed on, so it
is validated once at construction and hashed by :meth:`ImageDataset.manifest_hash`;
subsets (``limit=``) keep the index of the samples they keep, never renumber them.

Sources implement two hooks, both taking positions in the *full* source:
``_read(src) -> list[Tensor]`` (in the order given) and ``_size(src_index) -> (H, W)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcache.errors import DataError

__all__ = ["ImageDataset", "contiguous_runs", "nhwc_to_tensors"]


class ImageDataset(Dataset):
    """An ordered, labelled set of RGB images with a stable string key per sample.

    ``ds[i]`` is ``(uint8 tensor (3, H, W), int label)``. Subclasses provide the reading;
    this class owns the index (keys, labels, class names), subsetting and identity.
    """

    def __init__(self, *, source: str, split: str, keys: Sequence[str], labels: np.ndarray,
                 class_names: Sequence[str]) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source} [{split}]: labels must be a 1-D integer array, "
                            f"got {labels.dtype} with shape {labels.shape}")
        if len(keys) != len(labels):
            raise DataError(f"{source} [{split}]: {len(keys)} keys but {len(labels)} labels; "
                            "every sample needs exactly one label")
        names = [str(c) for c in class_names]
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            i = int(np.flatnonzero((labels < 0) | (labels >= len(names)))[0])
            raise DataError(f"{source} [{split}]: sample {i} ({str(keys[i])!r}) has label {int(labels[i])}, outside "
                            f"the {len(names)} classes (labels must be 0..{len(names) - 1}); fix the label or the "
                            "class names")
        key_list = [str(k) for k in keys]
        if len(set(key_list)) != len(key_list):
            dup = next(k for k, n in Counter(key_list).items() if n > 1)
            raise DataError(f"{source} [{split}]: sample key {dup!r} occurs more than once; "
                            "keys (file names) must be unique")
        self.source = source
        self.split = split
        self.stored_split = split  # the split read from storage (`split` names a held-out part of it)
        self.val_fraction = 0.0  # > 0: a part of a split divided into train and a held-out val
        self.class_names = names
        self.keys = key_list
        self.labels = labels.astype(np.int64, copy=True)
        # Positions into the full source; a subset keeps the source and narrows this.
        self._src_index = np.arange(len(key_list), dtype=np.int64)

    # ------------------------------------------------------------------ index
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, positions: Sequence[int] | np.ndarray) -> ImageDataset:
        """A dataset over the samples at ``positions`` (in that order), sharing this one's source.

        Keys and labels are those of the chosen samples, so a subset's cache entries line up
        with the full dataset's.
        """
        pos = self._positions(positions)
        if len(np.unique(pos)) != len(pos):
            raise DataError(f"{self.source} [{self.split}]: select() positions repeat a sample; "
                            "keys must stay unique, so pass each position once")
        sub = copy.copy(self)
        sub.keys = [self.keys[p] for p in pos]
        sub.labels = self.labels[pos].copy()
        sub._src_index = self._src_index[pos].copy()
        sub._on_select()
        return sub

    def manifest_hash(self) -> str:
        """sha256 over the ordered (key, label) pairs: the identity of this dataset's index."""
        h = hashlib.sha256()
        for key, label in zip(self.keys, self.labels.tolist()):
            # JSON-quoting the key keeps the encoding unambiguous whatever characters it holds.
            h.update(f"{json.dumps(key)}\t{label}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary written into caches and checkpoints."""
        d = {
            "source": self.source,
            "split": self.split,
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "manifest_sha256": self.manifest_hash(),
        }
        if self.val_fraction:
            d["val_fraction"] = self.val_fraction  # how train and val were divided (kdcache.data._subset.held_out)
        return d

    # ------------------------------------------------------------------ images
    def get_images(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """uint8 (3, H, W) images at ``indices``; sources read contiguous runs as blocks."""
        pos = self._positions(indices)
        return self._read(self._src_index[pos])

    def get_image(self, i: int) -> torch.Tensor:
        return self.get_images([i])[0]

    def sample_file(self, i: int) -> str | None:
        """The file image ``i`` is read from (sources of one file per image), else None."""
        (pos,) = self._positions([i])
        return self._file_of(int(self._src_index[pos]))

    def _file_of(self, src_index: int) -> str | None:
        return None

    #: True for sources whose images all share one shape (arrays); then :meth:`max_side` is known.
    same_size_images: bool = False

    def max_side(self) -> int | None:
        """The longest image side when every image has the same shape, else None (it varies per file)."""
        return max(self.image_size(0)) if self.same_size_images and len(self) else None

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i``; sources with a fixed shape answer without decoding."""
        (pos,) = self._positions([i])
        return self._size(int(self._src_index[pos]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        (pos,) = self._positions([i])
        return self._read(self._src_index[pos:pos + 1])[0], int(self.labels[pos])

    def preload(self) -> ImageDataset:
        """Bring what this dataset reads into memory now, if the source keeps it there.

        Call it before starting forked DataLoader workers: they then share the loaded
        arrays copy-on-write instead of each loading its own copy. Returns ``self``.
        """
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, "
                f"num_samples={len(self)}, num_classes={self.num_classes})")

    # ------------------------------------------------------------------ hooks
    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        raise NotImplementedError

    def _size(self, src_index: int) -> tuple[int, int]:
        raise NotImplementedError

    def _on_select(self) -> None:
        """Called on a fresh subset; sources reset per-index state here."""

    # ------------------------------------------------------------------ helpers
    def _positions(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        pos = np.asarray(indices)
        if pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
            raise TypeError(f"indices must be a sequence of integers, got {indices!r}")
        n = len(self)
        if pos.min() < -n or pos.max() >= n:
            bad = int(pos.min()) if pos.min() < -n else int(pos.max())
            raise IndexError(f"index {bad} is out of range for a dataset of {n} samples")
        return np.where(pos < 0, pos + n, pos).astype(np.int64)


def contiguous_runs(sorted_unique: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` runs of consecutive integers in a sorted, duplicate-free array."""
    if sorted_unique.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_unique) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [sorted_unique.size]))
    return [(int(sorted_unique[a]), int(sorted_unique[b - 1]) + 1) for a, b in zip(starts, stops)]


def nhwc_to_tensors(images: np.ndarray) -> list[torch.Tensor]:
    """Split an (N, H, W, 3) uint8 array into N owned, contiguous (3, H, W) tensors."""
    return [torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) for img in images]
