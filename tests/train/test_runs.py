"""Student runs from a real (tiny) cache: distillation works, resume continues, DeiT gets both heads."""

from __future__ import annotations

import json

import numpy as np
import torch

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.models.checkpoint import load_checkpoint
from kdcache.train import LossConfig, TrainConfig, train_student


def _cache(tmp_path, tiny_h5, teacher, views=2) -> str:
    out = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=out, teacher=TeacherSpec(weights=teacher),
                            views=views, view={"size": 32}, workers=0, block_size=16), progress=False,
                 log=lambda _m: None)
    return out


def test_hard_distillation_of_a_deit_student_raises_teacher_agreement(tmp_path, tiny_h5, tiny_teacher):
    cache = _cache(tmp_path, tiny_h5, tiny_teacher, views=4)
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "deit"), model="deit_test_distilled",
                      cache=cache, epochs=8, batch_size=16, lr=3e-3, warmup_epochs=0, workers=0,
                      loss=LossConfig(distill="hard"), val_split=None)
    train_student(cfg, progress=False, log=lambda _m: None)
    rows = [json.loads(x) for x in (tmp_path / "deit" / "metrics.jsonl").read_text().splitlines()]
    agree = [r["train/teacher_agreement"] for r in rows]
    assert np.mean(agree[-2:]) > np.mean(agree[:2]) + 0.1, agree
    model, extra = load_checkpoint(str(tmp_path / "deit" / "last.pt"))
    assert "head_dist.weight" in model.state_dict() and extra["epoch"] == 7
    model.eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_resume_after_interruption_reproduces_an_uninterrupted_run(tmp_path, tiny_h5, tiny_teacher, monkeypatch):
    import pytest

    from kdcache.train import runner

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", cache=cache, batch_size=16, workers=0,
                val_split="test", epochs=3)
    train_student(TrainConfig(out=str(tmp_path / "full"), **base), progress=False, log=lambda _m: None)

    real_end = runner._Run.end_epoch

    def crash_after_first_epoch(self, epoch, *a, **k):
        real_end(self, epoch, *a, **k)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner._Run, "end_epoch", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_student(TrainConfig(out=str(tmp_path / "cut"), **base), progress=False, log=lambda _m: None)
    monkeypatch.setattr(runner._Run, "end_epoch", real_end)
    logs: list[str] = []
    train_student(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base), progress=False, log=logs.append)
    assert any("resumed" in m and "epoch 1" in m for m in logs)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    full, _ = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    cut, extra = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    assert extra["epoch"] == 2
    for (k, a), (_, b) in zip(full.state_dict().items(), cut.state_dict().items()):
        assert torch.equal(a, b), k


def test_without_validation_best_is_the_lowest_training_loss(tmp_path, tiny_h5, tiny_teacher):
    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    out = train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "nv"), model="cnn_tiny",
                                    cache=cache, epochs=2, batch_size=16, workers=0, val_split=None),
                        progress=False, log=lambda _m: None)
    assert out["best_top1"] is None
    rows = [json.loads(x) for x in (tmp_path / "nv" / "metrics.jsonl").read_text().splitlines()]
    _, best = load_checkpoint(str(tmp_path / "nv" / "best.pt"))
    assert best["best_score"] == -min(r["train/loss"] for r in rows)


def test_tensorboard_event_files_when_the_extra_is_installed(tmp_path, tiny_h5, tiny_teacher):
    import pytest

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "tb"), model="cnn_tiny",
                              cache=cache, epochs=2, batch_size=16, workers=0), progress=False, log=lambda _m: None)
    acc = EventAccumulator(str(tmp_path / "tb" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "val/top1" in tags
    assert [e.step for e in acc.Scalars("val/top1")] == [0, 1]
