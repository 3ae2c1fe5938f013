"""``folder:PATH``: an ImageFolder tree, one sub-folder per class, JPEG/PNG files.

If ``PATH`` holds split folders (``train``, ``val``, ``test``, ...), ``PATH/<split>`` is used;
otherwise ``PATH`` itself is the ``train`` split — or, with ``val_fraction`` > 0, it is divided
into ``train`` and a held-out ``val`` split: in each class, the files whose sha256(key) ranks in
the lowest ``round(val_fraction * n)`` (at least one, at most n - 1 when n > 1) are ``val``. The
rule depends on the keys alone, so the division is the same on every machine and run. Classes are the sorted sub-folder names;
files are found recursively and sorted by their path, so the order (and the keys: paths
relative to the split root, with forward slashes) is the same on every machine. Hidden
files and folders (``.ipynb_checkpoints``, ``.DS_Store``) are ignored.

Images are decoded by Pillow to RGB uint8 (:mod:`kdcache.data._decode`, the same pixels
``torchvision.io.decode_image`` gave); sizes are read from the file header so :meth:`image_size`
does not decode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kdcache.data._dataset import ImageDataset
from kdcache.data._decode import DECODER, decode_image_file, image_header_size
from kdcache.data._subset import held_out
from kdcache.errors import DataError, DataNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_FOLDER_NAMES", "FolderDataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLIT_FOLDER_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")


class FolderDataset(ImageDataset):
    """One split of an ImageFolder tree (see the module docstring)."""

    def __init__(self, *, path: str | os.PathLike[str], split: str = "train",
                 source: str | None = None, val_fraction: float = 0.0) -> None:
        path = Path(path).expanduser()
        source = source if source is not None else f"folder:{path}"
        if not path.is_dir():
            raise DataNotFoundError(f"image folder not found: {path}; check the path in {source!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"`val_fraction` must be in [0, 1), got {val_fraction!r}")
        root = _split_root(path, split, val_fraction)
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"{root} has no class sub-folders; expected one folder of images per class")
        keys: list[str] = []
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            files = _image_files(class_dir, root)
            if not files:
                raise DataError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                "add images or remove the folder")
            keys.extend(files)
            labels.extend([label] * len(files))
        if val_fraction > 0:
            held = held_out(keys, labels, val_fraction)
            keep = [i for i in range(len(keys)) if held[i] == (split == "val")]
            keys, labels = [keys[i] for i in keep], [labels[i] for i in keep]
        super().__init__(source=source, split=split, keys=keys, labels=np.asarray(labels, dtype=np.int64),
                         class_names=[p.name for p in class_dirs])
        self.val_fraction = float(val_fraction)
        self._root = root
        self._files = keys  # relative paths by source position; subsets narrow self.keys only

    def describe(self) -> dict:
        d = super().describe()
        d["decoder"] = DECODER
        return d

    def _file(self, src_index: int) -> Path:
        return self._root / self._files[src_index]

    def _file_of(self, src_index: int) -> str | None:
        return str(self._file(src_index))

    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        return [self._decode(self._file(int(j))) for j in src]

    def _size(self, src_index: int) -> tuple[int, int]:
        path = self._file(src_index)
        if not path.is_file():
            raise DataNotFoundError(f"image file disappeared: {path}; rebuild the dataset")
        return image_header_size(path, str(path))

    @staticmethod
    def _decode(path: Path) -> torch.Tensor:
        if not path.is_file():
            raise DataNotFoundError(f"image file disappeared: {path}; rebuild the dataset")
        return decode_image_file(path)


def _split_root(path: Path, split: str, val_fraction: float = 0.0) -> Path:
    split_dirs = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name in SPLIT_FOLDER_NAMES)
    if split_dirs:
        if val_fraction:
            raise DataError(f"{path} has split folders ({', '.join(split_dirs)}); `val_fraction` only divides a "
                            "folder without them")
        if split not in split_dirs:
            raise DataError(f"{path} has no split {split!r}; available splits: {', '.join(split_dirs)}")
        return path / split
    if val_fraction and split not in ("train", "val"):
        raise DataError(f"{path} is divided by `val_fraction` into the splits train and val, not {split!r}")
    if not val_fraction and split != "train":
        raise DataError(f"{path} has no split folders, so it is the 'train' split only; available splits: "
                        f"train (hold some out with `val_fraction`, or create {path}/{split}/<class>/...)")
    return path


def _image_files(class_dir: Path, root: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)
