"""Student runs from a real (tiny) cache: distillation works, resume continues, DeiT gets both heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.models._checkpoint import load_checkpoint
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


@pytest.mark.parametrize("model", ["cnn_tiny", "keras_tokenlearner_vit_test"])  # the second with dropout
def test_resume_after_interruption_reproduces_an_uninterrupted_run(tmp_path, tiny_h5, tiny_teacher, monkeypatch,
                                                                     model):
    from kdcache.train import _run as runner

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    kwargs = {"img_size": 32} if model.startswith("keras") else {}  # the cache's views are 32 px
    base = dict(data=DataConfig(source=tiny_h5), model=model, model_kwargs=kwargs, cache=cache, batch_size=16, workers=0,
                val_split="test", epochs=3)
    train_student(TrainConfig(out=str(tmp_path / "full"), **base), progress=False, log=lambda _m: None)

    real_end = runner.Run.end_epoch

    def crash_after_first_epoch(self, epoch, *a, **k):
        real_end(self, epoch, *a, **k)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.Run, "end_epoch", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_student(TrainConfig(out=str(tmp_path / "cut"), **base), progress=False, log=lambda _m: None)
    monkeypatch.setattr(runner.Run, "end_epoch", real_end)
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


def test_a_run_killed_between_an_epochs_metrics_and_its_checkpoint_lists_the_epoch_once(tmp_path, tiny_h5,
                                                                                       tiny_teacher, monkeypatch):
    """metrics.jsonl gets the epoch's row before last.pt is written: resumed from the older last.pt, the run
    trains that epoch again and its row appears once, as in an uninterrupted run."""
    from kdcache.train import _run as runner

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", cache=cache, batch_size=16, workers=0,
                val_split="test", epochs=3, out=str(tmp_path / "cut"))
    real_save = runner.save_checkpoint

    def killed_saving_epoch_1(path, model, **state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        real_save(path, model, **state)

    monkeypatch.setattr(runner, "save_checkpoint", killed_saving_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_student(TrainConfig(**base), progress=False, log=lambda _m: None)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # epoch 1's row, but no checkpoint of it
    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    train_student(TrainConfig(resume=True, **base), progress=False, log=lambda _m: None)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_by_default_nothing_is_selected_on_test_and_best_pt_is_tested_once(tmp_path, tiny_h5, tiny_teacher):
    from kdcache.train import evaluate_checkpoint

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    logs: list[str] = []
    out = train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "nv"), model="cnn_tiny",
                                    cache=cache, epochs=2, batch_size=16, workers=0), progress=False, log=logs.append)
    assert out["best_top1"] is None
    assert any("no validation split: best.pt is the last epoch" in m for m in logs)
    rows = [json.loads(x) for x in (tmp_path / "nv" / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("val/") for r in rows for k in r)  # the test split never selected anything
    best, extra = load_checkpoint(str(tmp_path / "nv" / "best.pt"))
    last, _ = load_checkpoint(str(tmp_path / "nv" / "last.pt"))
    assert extra["epoch"] == 1 and all(torch.equal(a, b) for a, b in zip(best.state_dict().values(),
                                                                         last.state_dict().values()))
    test = json.loads((tmp_path / "nv" / "test.json").read_text())
    assert out["test"] == test and test["split"] == "test" and test["epoch"] == 2
    assert test["selected_by"] == "the last epoch" and test["images"] == 24
    again = evaluate_checkpoint(str(tmp_path / "nv" / "best.pt"), workers=0)  # the recorded data and test split
    assert (again["split"], again["images"], again["top1"]) == ("test", 24, test["top1"])
    assert json.loads((tmp_path / "nv" / "config.json").read_text())["config"]["val_split"] is None


def test_val_fraction_selects_on_training_data_held_out_of_the_cache(tmp_path, tiny_h5, tiny_teacher):
    from kdcache.data import open_dataset

    data = DataConfig(source=tiny_h5, val_fraction=0.25)
    cache = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=data, out=cache, teacher=TeacherSpec(weights=tiny_teacher), views=2,
                            view={"size": 32}, workers=0, block_size=16), progress=False, log=lambda _m: None)
    out = train_student(TrainConfig(data=data, out=str(tmp_path / "v"), model="cnn_tiny", cache=cache, epochs=3,
                                    batch_size=16, workers=0), progress=False, log=lambda _m: None)
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    train, val = (open_dataset(tiny_h5, s, val_fraction=0.25) for s in ("train", "val"))
    assert (len(train), len(val)) == (36, 12) and not set(train.keys) & set(val.keys)
    assert all(r["val/images"] == 12 for r in rows)  # selected on the 12 held-out training images
    best_epoch = max(range(3), key=lambda e: (rows[e]["val/top1"], -e))
    test = out["test"]
    assert test["epoch"] == best_epoch + 1 and test["images"] == 24 and test["selected_by"] == "val top-1 on 'val'"


def test_selecting_on_the_test_split_is_said(tmp_path, tiny_h5, tiny_teacher):
    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    logs: list[str] = []
    train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "t"), model="cnn_tiny",
                              cache=cache, epochs=1, batch_size=16, workers=0, val_split="test"),
                  progress=False, log=logs.append)
    assert any("best.pt is selected on the test split 'test': its test top-1 is optimistic" in m for m in logs)
    # neither a validation nor a test split: nothing is selected on the test split, and nothing says so
    logs.clear()
    train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "n"), model="cnn_tiny",
                              cache=cache, epochs=1, batch_size=16, workers=0, val_split=None, test_split=None),
                  progress=False, log=logs.append)
    assert not any("selected on the test split" in m for m in logs), logs


def test_tensorboard_event_files_when_the_extra_is_installed(tmp_path, tiny_h5, tiny_teacher):
    import pytest

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "tb"), model="cnn_tiny",
                              cache=cache, epochs=2, batch_size=16, workers=0, val_split="test"), progress=False,
                  log=lambda _m: None)
    acc = EventAccumulator(str(tmp_path / "tb" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "val/top1" in tags
    assert [e.step for e in acc.Scalars("val/top1")] == [0, 1]


# ---------------------------------------------------------------------- the run directory
def _teacher_cfg(tiny_h5, out, **kw) -> TrainConfig:
    base = dict(data=DataConfig(source=tiny_h5), out=str(out), model="cnn_tiny", epochs=1, batch_size=16,
                workers=0, val_split=None, view={"size": 16})
    base.update(kw)
    return TrainConfig(**base)


def test_an_existing_run_is_never_overwritten_silently(tmp_path, tiny_h5):
    import pytest

    from kdcache.errors import ConfigError
    from kdcache.train import train_teacher

    out = tmp_path / "run"
    train_teacher(_teacher_cfg(tiny_h5, out), progress=False, log=lambda _m: None)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a run \(last.pt, best.pt, metrics.jsonl, config.json, test.json\)"
                       r".*`resume`.*`overwrite`"):
        train_teacher(_teacher_cfg(tiny_h5, out, seed=1), progress=False, log=lambda _m: None)
    assert (out / "last.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="exclude each other"):
        _teacher_cfg(tiny_h5, out, resume=True, overwrite=True)
    train_teacher(_teacher_cfg(tiny_h5, out, seed=1, overwrite=True), progress=False, log=lambda _m: None)
    assert (out / "last.pt").read_bytes() != before
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # the old run's metrics went with it, not appended to


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, tiny_h5):
    import pytest

    from kdcache.errors import KdcacheError
    from kdcache.train import train_teacher

    out = tmp_path / "new" / "run"
    with pytest.raises(KdcacheError, match="unknown model"):
        train_teacher(_teacher_cfg(tiny_h5, out, model="no_such_model"), progress=False, log=lambda _m: None)
    assert not out.exists()
    # A directory the user made stays, emptied of what the run wrote (metrics, TensorBoard files).
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(KdcacheError):
        train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(mine), model="cnn_tiny",
                                  cache=str(tmp_path / "missing.zarr"), workers=0), progress=False,
                      log=lambda _m: None)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_checkpoint_write_failure_keeps_the_last_checkpoint_and_says_so(tmp_path, tiny_h5, monkeypatch):
    """A disk that fills up at epoch 2: one-line CheckpointError, epoch 1's last.pt kept and resumable."""
    import errno

    import pytest

    import kdcache.train._run as runner
    from kdcache.errors import CheckpointError
    from kdcache.train import train_teacher

    real = runner.save_checkpoint
    calls = {"n": 0}

    def fill_up(path, model, **extra):
        calls["n"] += 1
        if extra["epoch"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, model, **extra)

    monkeypatch.setattr(runner, "save_checkpoint", fill_up)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"cannot write .*last.pt \(No space left on device\).*"
                                              r"last.pt is kept: rerun with `resume`") as info:
        train_teacher(_teacher_cfg(tiny_h5, out, epochs=3), progress=False, log=lambda _m: None)
    assert "\n" not in str(info.value)
    assert load_checkpoint(out / "last.pt")[1]["epoch"] == 0
    monkeypatch.setattr(runner, "save_checkpoint", real)
    train_teacher(_teacher_cfg(tiny_h5, out, epochs=3, resume=True), progress=False, log=lambda _m: None)
    assert load_checkpoint(out / "last.pt")[1]["epoch"] == 2


def test_a_test_json_that_cannot_be_written_is_one_line_and_resume_writes_it(tmp_path, tiny_h5, monkeypatch):
    """A full disk at the very end: one-line CheckpointError naming test.json, the checkpoints kept, and
    `resume` (no epoch left) tests best.pt and writes test.json."""
    import builtins
    import errno

    import pytest

    from kdcache.errors import CheckpointError
    from kdcache.train import _run, train_teacher

    def full_for_test_json(path, *a, **k):
        if str(path).endswith("test.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return builtins.open(path, *a, **k)

    cfg = _teacher_cfg(tiny_h5, tmp_path / "t")
    monkeypatch.setattr(_run, "open", full_for_test_json, raising=False)
    with pytest.raises(CheckpointError, match=r"cannot write .*test\.json \(No space left on device\)") as e:
        train_teacher(cfg, progress=False, log=lambda _m: None)
    assert "\n" not in str(e.value) and (tmp_path / "t" / "last.pt").is_file()
    monkeypatch.undo()
    from dataclasses import replace

    out = train_teacher(replace(cfg, resume=True), progress=False, log=lambda _m: None)
    assert json.loads((tmp_path / "t" / "test.json").read_text()) == out["test"]
