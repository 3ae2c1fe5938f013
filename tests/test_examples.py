"""Each script in examples/ runs at toy size on a tiny cache, and trains on train-student's views.

The examples are loaded from their files (not copied); a spy on the step that receives each batch
records which sample and cached view every item was, so the test can check that epoch ``e`` of the
framework's loop trained on exactly the views ``epoch_views`` picks for ``e``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import kdcache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
N, BATCH, EPOCHS = 48, 16, 3  # tiny_h5 has 48 training images: 3 steps per epoch


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"kdcache_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_cache(tmp_path, tiny_h5, tiny_teacher) -> str:
    out = str(tmp_path / "cache.zarr")
    kdcache.dump_teacher(kdcache.DumpConfig(
        data=kdcache.DataConfig(source=tiny_h5), out=out, teacher=kdcache.TeacherSpec(weights=tiny_teacher),
        views=3, seed=2, view={"size": 16, "mix": "cutmix"}, batch_size=16, workers=0, block_size=16),
        progress=False, log=lambda _m: None)
    return out


def _check_epochs(cache: str, seen: list[tuple[np.ndarray, np.ndarray]], *, seed: int) -> None:
    """Step ``s`` belongs to epoch ``s // steps``; its items must replay that epoch's views."""
    store = kdcache.open_cache(cache)
    steps = -(-N // BATCH)
    assert len(seen) == EPOCHS * steps
    for step, (index, view) in enumerate(seen):
        picked = kdcache.epoch_views(store.done_units(), epoch=step // steps, seed=seed)
        assert (view == picked[index // store.block_size]).all(), f"step {step}"
    assert len({tuple(v) for _, v in seen}) > 1


def _run_args(cache: str, out: Path, seed: int) -> list[str]:
    return ["--cache", cache, "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--workers", "2",
            "--seed", str(seed), "--out", str(out)]


@pytest.mark.slow
def test_hugging_face_trainer_example(tmp_path, tiny_cache, monkeypatch):
    example = _load("hf_trainer")
    seen = []
    original = example.DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append((inputs["index"].numpy().copy(), inputs["view"].numpy().copy()))
        assert set(inputs["targets"]) == {"logits", "argmax"} and inputs["label"].shape[1] == 3
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(example.DistillationTrainer, "compute_loss", spy)
    result = example.main(_run_args(tiny_cache, tmp_path / "hf", seed=4))
    assert result["steps"] == EPOCHS * 3 and np.isfinite(result["train_loss"])
    _check_epochs(tiny_cache, seen, seed=4)
    student, _ = kdcache.load_checkpoint(result["checkpoint"])
    assert student(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


@pytest.mark.slow
def test_lightning_example(tmp_path, tiny_cache, monkeypatch):
    example = _load("lightning_module")
    seen = []
    original = example.DistilledStudent.training_step

    def spy(self, batch, batch_idx):
        seen.append((batch["index"].numpy().copy(), batch["view"].numpy().copy()))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(example.DistilledStudent, "training_step", spy)
    result = example.main(_run_args(tiny_cache, tmp_path / "lightning", seed=6))
    assert result["steps"] == EPOCHS * 3 and np.isfinite(result["loss"])
    _check_epochs(tiny_cache, seen, seed=6)
    student, _ = kdcache.load_checkpoint(result["checkpoint"])
    assert student(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
