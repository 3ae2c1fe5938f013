"""Builders for small synthetic HDF5 files and image folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def make_h5(tmp_path: Path) -> Callable[..., Path]:
    """Write an HDF5 file with the given splits: ``{split: (images, labels, filenames|None)}``.

    ``chunk`` images per gzip chunk (0: contiguous, uncompressed).
    """

    def make(splits: dict, *, class_names: list[str] | None = None, chunk: int = 4,
             name: str = "data.h5") -> Path:
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            for split, (images, labels, filenames) in splits.items():
                g = f.create_group(split)
                chunked = chunk > 0 and images.ndim == 4 and len(images) > 0
                chunks = (min(chunk, len(images)), *images.shape[1:]) if chunked else None
                g.create_dataset("images", data=images, chunks=chunks,
                                 compression="gzip" if chunks else None)
                g.create_dataset("labels", data=labels)
                if filenames is not None:
                    g.create_dataset("filenames", data=np.array([s.encode() for s in filenames]))
            if class_names is not None:
                f.attrs["class_names"] = class_names
        return path

    return make


def write_image(path: Path, image: np.ndarray, fmt: str = "png") -> None:
    """Write an (H, W, 3) uint8 image as PNG (lossless) or JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        Image.fromarray(image).save(path, format="PNG")
    else:
        Image.fromarray(image).save(path, format="JPEG", quality=95)


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Write an ImageFolder tree ``{relative_path: image}`` under ``tmp_path/name``."""

    def make(files: dict[str, np.ndarray], *, name: str = "imgs") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        for rel, image in files.items():
            write_image(root / rel, image, "jpg" if rel.lower().endswith((".jpg", ".jpeg")) else "png")
        return root

    return make
