"""``hdf5:PATH``: images packed in one HDF5 file, the fast path for real data.

Layout: ``<split>/images`` uint8 (N, H, W, 3) RGB, ``<split>/labels`` integer (N,), optional
``<split>/filenames`` (str or bytes; the sample keys, else ``"{split}/{index}"``), optional
root attribute ``class_names`` (or ``num_classes``); labels outside the classes are refused.

Compressed HDF5 decodes whole chunks, so reading image by image would decode a full chunk
(256 images in the shared CIFAR file) per image. Reads therefore go through chunk-aligned
blocks: every contiguous run of missing chunks is one h5py slice. When the chunks this
dataset needs fit in ``in_memory_max_bytes`` they are all loaded on first access and kept
(random access during training is then free); otherwise a small per-process LRU of blocks
is kept.

The file is opened lazily and the handle belongs to the process that opened it: after a
fork (DataLoader workers) it is reopened, and it is never pickled.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from kdcache.data._dataset import ImageDataset, contiguous_runs, nhwc_to_tensors
from kdcache.errors import DataError, DataNotFoundError

__all__ = ["IN_MEMORY_MAX_BYTES", "HDF5Dataset"]

IN_MEMORY_MAX_BYTES = 1 << 30
_DEFAULT_CACHE_BLOCKS = 8
_UNCHUNKED_BLOCK_BYTES = 4 << 20


class HDF5Dataset(ImageDataset):
    """One split of an HDF5 image file (see the module docstring for the layout)."""

    same_size_images = True

    def __init__(self, *, path: str | os.PathLike[str], split: str = "train", source: str | None = None,
                 in_memory_max_bytes: int = IN_MEMORY_MAX_BYTES,
                 cache_blocks: int = _DEFAULT_CACHE_BLOCKS) -> None:
        path = Path(path).expanduser()
        source = source if source is not None else f"hdf5:{path}"
        if not path.exists():
            raise DataNotFoundError(f"HDF5 file not found: {path}; check the path in {source!r}")
        try:
            handle = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{path} is not a readable HDF5 file ({e}); "
                            "expected <split>/images and <split>/labels datasets") from e
        with handle as f:
            meta = _read_metadata(f, path, split)
        super().__init__(source=source, split=split, keys=meta["keys"], labels=meta["labels"],
                         class_names=meta["class_names"])
        self._path = path
        self._shape: tuple[int, ...] = meta["shape"]
        self._block_rows: int = meta["block_rows"]
        self._in_memory_max_bytes = int(in_memory_max_bytes)
        self._cache_blocks = max(1, int(cache_blocks))
        self._reset_process_state()

    # ------------------------------------------------------------------ process-local state
    def _reset_process_state(self) -> None:
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._resident: bool | None = None  # undecided until the first read

    def __getstate__(self) -> dict[str, Any]:
        # Pickles carry the index and the path only; the receiver reopens and rereads lazily.
        state = dict(self.__dict__)
        state.update(_h5=None, _pid=None, _blocks=OrderedDict(), _resident=None)
        return state

    def _on_select(self) -> None:
        # A subset has its own residency decision and cache (it may need fewer chunks).
        self._blocks = OrderedDict(self._blocks)
        self._resident = None

    def _images(self) -> h5py.Dataset:
        if self._h5 is None or self._pid != os.getpid():
            # Never reuse a handle opened by another process (the parent of a forked worker).
            self._h5 = h5py.File(self._path, "r")
            self._pid = os.getpid()
        return self._h5[self.stored_split]["images"]

    def preload(self) -> HDF5Dataset:
        if self._resident is None:
            self._decide_residency()
        return self

    @property
    def in_memory(self) -> bool | None:
        """True once the needed chunks are resident, False when reading through the LRU, None before."""
        return self._resident

    # ------------------------------------------------------------------ reading
    def _size(self, src_index: int) -> tuple[int, int]:
        return int(self._shape[1]), int(self._shape[2])

    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        if src.size == 0:
            return []
        if self._resident is None:
            self._decide_residency()
        uniq, inverse = np.unique(src, return_inverse=True)
        chunk_of = uniq // self._block_rows
        blocks = self._fetch(np.unique(chunk_of))
        out = np.empty((len(uniq), *self._shape[1:]), dtype=np.uint8)
        for c, block in blocks.items():
            mask = chunk_of == c
            out[mask] = block[uniq[mask] - c * self._block_rows]
        return nhwc_to_tensors(out[inverse])

    def _decide_residency(self) -> None:
        needed = np.unique(self._src_index // self._block_rows)
        image_bytes = int(np.prod(self._shape[1:]))
        resident_bytes = min(len(needed) * self._block_rows, self._shape[0]) * image_bytes
        self._resident = resident_bytes <= self._in_memory_max_bytes
        if self._resident:
            self._fetch(needed)
            # Everything this dataset reads is now in memory: drop the handle so a later fork
            # inherits plain arrays only.
            self._h5 = None

    def _fetch(self, chunk_ids: np.ndarray) -> dict[int, np.ndarray]:
        """The blocks ``chunk_ids`` (rows ``c*B:(c+1)*B``), one h5py slice per run of missing ones."""
        found: dict[int, np.ndarray] = {}
        missing = []
        for c in chunk_ids.tolist():
            if c in self._blocks:
                self._blocks.move_to_end(c)
                found[c] = self._blocks[c]
            else:
                missing.append(c)
        rows = self._block_rows
        for a, b in contiguous_runs(np.asarray(missing, dtype=np.int64)):
            data = self._images()[a * rows: min(b * rows, self._shape[0])]
            for c in range(a, b):
                block = data[(c - a) * rows: (c - a + 1) * rows]
                # Resident blocks may view one big read; LRU blocks are copied so evicting
                # them really frees memory.
                found[c] = block if self._resident else block.copy()
                self._blocks[c] = found[c]
        if not self._resident:
            while len(self._blocks) > self._cache_blocks:
                self._blocks.popitem(last=False)
        return found


def _read_metadata(f: h5py.File, path: Path, split: str) -> dict[str, Any]:
    splits = sorted(k for k, v in f.items() if isinstance(v, h5py.Group) and "images" in v)
    if split not in splits:
        available = ", ".join(splits) if splits else "none (no group holds an 'images' dataset)"
        raise DataError(f"{path} has no split {split!r}; available splits: {available}")
    g = f[split]
    images = g["images"]
    if not isinstance(images, h5py.Dataset) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        raise DataError(f"{path} [{split}/images]: expected uint8 RGB images of shape (N, H, W, 3), got "
                        f"{getattr(images, 'dtype', '?')} {getattr(images, 'shape', '?')}; "
                        "store images as uint8 NHWC RGB")
    n = images.shape[0]
    if "labels" not in g:
        raise DataError(f"{path} [{split}]: missing 'labels' dataset; add {split}/labels (integer, shape (N,))")
    labels = g["labels"][()]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path} [{split}/labels]: expected a 1-D integer array, got {labels.dtype} "
                        f"{labels.shape}; store class indices as integers")
    if len(labels) != n:
        raise DataError(f"{path} [{split}]: {n} images but {len(labels)} labels; they must have the same length")
    if "filenames" in g:
        keys = [_as_str(v) for v in g["filenames"][()]]
        if len(keys) != n:
            raise DataError(f"{path} [{split}]: {n} images but {len(keys)} filenames; "
                            "they must have the same length")
    else:
        keys = [f"{split}/{i}" for i in range(n)]
    if "class_names" in f.attrs:
        class_names = [_as_str(v) for v in np.atleast_1d(f.attrs["class_names"])]
    elif "num_classes" in f.attrs:
        c = f.attrs["num_classes"]
        if not np.issubdtype(np.asarray(c).dtype, np.integer) or np.ndim(c) != 0 or int(c) < 1:
            raise DataError(f"{path}: root attribute num_classes must be a positive integer, got {c!r}")
        class_names = [str(i) for i in range(int(c))]  # labels outside 0..C-1 are refused by ImageDataset
    else:
        class_names = _classes_from_labels(labels, keys, path, split)
    if images.chunks is not None:
        block_rows = int(images.chunks[0])
    else:
        block_rows = max(1, _UNCHUNKED_BLOCK_BYTES // max(1, int(np.prod(images.shape[1:]))))
    return {"keys": keys, "labels": labels, "class_names": class_names,
            "shape": tuple(int(s) for s in images.shape), "block_rows": block_rows}


def _classes_from_labels(labels: np.ndarray, keys: list[str], path: Path, split: str) -> list[str]:
    """Classes 0..max(label) when the file names none. A label far past the others (one 999 among 0..9)
    would silently make a 1000-class dataset: when most implied classes have no sample it is refused."""
    if not labels.size:
        return []
    where = f"{path} [{split}/labels]"
    if labels.min() < 0:
        i = int(np.argmin(labels))
        raise DataError(f"{where}: sample {i} ({keys[i]!r}) has negative label {int(labels[i])}; "
                        "labels must be class indices 0..C-1")
    n = int(labels.max()) + 1
    empty = n - len(np.unique(labels))
    if empty > n // 2:  # a few classes may be absent from a split; most of them absent is a stray label
        i = int(np.argmax(labels))
        raise DataError(f"{where}: labels imply {n} classes (sample {i} ({keys[i]!r}) has label {n - 1}) but "
                        f"{empty} of them have no sample; fix the labels, or record the classes in the file's "
                        "class_names (or num_classes) root attribute")
    return [str(c) for c in range(n)]


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
