"""``digits``: scikit-learn's bundled 8x8 handwritten digits, the offline quickstart dataset.

1797 grey images with values 0..16 become RGB uint8 (value * 255 / 16, rounded, replicated to
three channels). The train/test split is stratified 80/20 and decided by hashing each
sample's index, so it is identical on every machine, process and library version.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from kdcache.data._dataset import ImageDataset, nhwc_to_tensors
from kdcache.errors import DataError

__all__ = ["DIGITS_SPLITS", "DigitsDataset", "digits_split_indices"]

DIGITS_SPLITS = ("train", "test")
_TEST_FRACTION = 0.2
_SPLIT_SALT = "kdcache-digits-split-v1"


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    return np.ascontiguousarray(rgb), bunch.target.astype(np.int64)


def digits_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Original indices (ascending) of the ``train`` or ``test`` split of the digits."""
    if split not in DIGITS_SPLITS:
        raise DataError(f"digits has no split {split!r}; available splits: {', '.join(DIGITS_SPLITS)}")
    test: list[int] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        ranked = sorted(members.tolist(), key=_split_rank)
        test.extend(ranked[: round(_TEST_FRACTION * len(members))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test).astype(np.int64)


def _split_rank(index: int) -> bytes:
    return hashlib.sha256(f"{_SPLIT_SALT}:{index}".encode()).digest()


class DigitsDataset(ImageDataset):
    """The digits split as an in-memory dataset (the whole set is 345 KB, so it travels in pickles)."""

    same_size_images = True

    def __init__(self, *, split: str = "train", source: str = "digits") -> None:
        images, labels = _load_digits()
        original = digits_split_indices(labels, split)
        super().__init__(source=source, split=split,
                         keys=[f"digits/{i:04d}" for i in original.tolist()],
                         labels=labels[original], class_names=[str(d) for d in range(10)])
        self._images = images[original]

    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        return nhwc_to_tensors(self._images[src])

    def _size(self, src_index: int) -> tuple[int, int]:
        return int(self._images.shape[1]), int(self._images.shape[2])
