"""Shared fixtures: deterministic seeds, paths to the shared offline data and weights."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_CIFAR = SHARED / "data" / "cifar10.h5"
SHARED_WEIGHTS = SHARED / "weights"

torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to oversubscription
# and so do the kdcache, torchrun and bench processes the tests start (each worker has one core: 6-7% less
# wall time on the process-level engine tests than with torch's default of one thread per core)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per available core, at most 8 (each worker holds its own torch, and many
    tests start subprocesses of their own)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip where no CUDA device is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_cifar() -> Path:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"shared dataset not found: {SHARED_CIFAR}")
    return SHARED_CIFAR


@pytest.fixture
def shared_weights() -> Path:
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"shared weights not found: {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS


def make_h5(path: Path, *, n_train: int = 48, n_test: int = 24, size: int = 16, classes: int = 3,
            seed: int = 0, by_class: bool = False) -> Path:
    """A tiny learnable HDF5 dataset: class c is a noisy image with a bright band at row range c. Samples
    cycle through the classes, or with ``by_class`` come class by class (as an image folder lists them)."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["class_names"] = [f"class{c}" for c in range(classes)]
        for split, n in (("train", n_train), ("test", n_test)):
            labels = np.arange(n) % classes
            if by_class:
                labels = np.sort(labels)
            imgs = rng.integers(0, 80, size=(n, size, size, 3), dtype=np.uint8)
            band = size // classes
            for i, c in enumerate(labels):
                imgs[i, c * band:(c + 1) * band, :, c % 3] = 230
            f[f"{split}/images"] = imgs
            f[f"{split}/labels"] = labels.astype(np.int64)
    return path


@pytest.fixture
def tiny_h5(tmp_path) -> str:
    """``hdf5:`` source string of a tiny 3-class dataset (48 train / 24 test, 16 px)."""
    return "hdf5:" + str(make_h5(tmp_path / "tiny.h5"))


@pytest.fixture
def tiny_teacher(tmp_path) -> str:
    """A randomly initialised cnn_tiny teacher (3 classes, 16 px input) saved as a kdcache checkpoint."""
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    torch.manual_seed(1)
    model = create_model("cnn_tiny", num_classes=3)
    path = tmp_path / "teacher.pt"
    save_checkpoint(str(path), model)
    return str(path)


@pytest.fixture
def make_cache(tmp_path, tiny_h5, tiny_teacher):
    """``make_cache(views, block_size)``: the path of a cache of ``tiny_teacher`` over ``tiny_h5`` (16 px views)."""
    from kdcache.data import DataConfig
    from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher

    def make(views: int, block_size: int) -> str:
        out = str(tmp_path / f"c{views}x{block_size}.zarr")
        dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=out, teacher=TeacherSpec(weights=tiny_teacher),
                                views=views, view={"size": 16}, workers=0, block_size=block_size, device="cpu"),
                     progress=False, log=lambda _m: None)
        return out

    return make


@pytest.fixture
def decodes(monkeypatch):
    """Counts image decodes per sample index (every source reads through ``ImageDataset.get_images``)."""
    from collections import Counter

    from kdcache.data._dataset import ImageDataset

    seen: Counter = Counter()
    original = ImageDataset.get_images

    def counting(self, indices):
        seen.update(int(i) for i in indices)
        return original(self, indices)

    monkeypatch.setattr(ImageDataset, "get_images", counting)
    return seen


@pytest.fixture
def tiny_hf_vit(tmp_path):
    """``tiny_hf_vit(**processor)``: the directory of a tiny 10-class Hugging Face ViT (32 px, patch 8) saved
    with ``save_pretrained``, its image processor made with ``processor``'s arguments."""
    transformers = pytest.importorskip("transformers")

    def make(**processor) -> Path:
        torch.manual_seed(0)
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, num_labels=10)
        vit = tmp_path / "vit"
        transformers.ViTForImageClassification(config).save_pretrained(vit)
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}, **processor).save_pretrained(vit)
        return vit

    return make


@pytest.fixture
def run_bench(monkeypatch):
    """``run_bench([python, bench/SCRIPT.py, *args], cwd=None)`` runs a benchmark script in this process, as
    ``python SCRIPT.py args`` would (``__main__``, its argv, its folder on sys.path) and reports it as
    :func:`subprocess.run` does: a smoke test need not pay a fresh interpreter and torch import (~3 s). Tests
    of what a process prints when it fails (exit code, one line on stderr) keep a real process."""
    import contextlib
    import io
    import runpy
    import subprocess
    import sys
    import traceback

    def go(cmd, *, cwd=None) -> subprocess.CompletedProcess:
        script = str(cmd[1])
        out, err, code = io.StringIO(), io.StringIO(), 0
        threads = torch.get_num_threads()
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", [script, *map(str, cmd[2:])])
            m.syspath_prepend(str(Path(script).parent))
            if cwd is not None:
                m.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    runpy.run_path(script, run_name="__main__")
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                except Exception:  # noqa: BLE001 - reported as a crashed process would be
                    code = 1
                    traceback.print_exc()
        torch.set_num_threads(threads)  # a script's --threads must not outlive it in this worker
        return subprocess.CompletedProcess(list(cmd), code, out.getvalue(), err.getvalue())

    return go
