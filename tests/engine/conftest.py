"""Fixtures of the process-level engine tests: one tiny world (dataset, teacher, reference cache).

The world is session-scoped: a 2-class HDF5 dataset (128 train images of 32 px), a cnn_tiny
teacher checkpoint, and a reference cache dumped once, without interruption, by the library in
this process. Every test that kills, resumes, extends or distributes a dump compares its result
with that reference, array for array and bit for bit. Process helpers and store comparison live
in tests/helpers/engine_support.py, put on sys.path here so test modules can import it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_HELPERS = str(Path(__file__).resolve().parents[1] / "helpers")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)

from engine_support import IMAGE_PX, N_TEST, N_TRAIN, World  # noqa: E402


def _write_dataset(path: Path) -> None:
    """Class c has a bright band in channel c over half of the rows (learnable, tiny)."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["class_names"] = ["top", "bottom"]
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            labels = np.arange(n) % 2
            imgs = rng.integers(0, 90, size=(n, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
            half = IMAGE_PX // 2
            for i, c in enumerate(labels):
                imgs[i, c * half:(c + 1) * half, :, c] = 230
            f[f"{split}/images"] = imgs
            f[f"{split}/labels"] = labels.astype(np.int64)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("engine_world")
    _write_dataset(root / "data.h5")
    torch.manual_seed(1)
    save_checkpoint(str(root / "teacher.pt"), create_model("cnn_tiny", num_classes=2))
    w = World(root=root, data=f"hdf5:{root / 'data.h5'}", teacher=str(root / "teacher.pt"),
              reference=str(root / "reference.zarr"))
    w.dump(w.reference)
    return w


@pytest.fixture(scope="session")
def two_view_cache(world) -> str:
    """The reference command with ``--views 2`` (tests copy it before extending it)."""
    path = str(world.root / "two_views.zarr")
    world.dump(path, views=2)
    return path
