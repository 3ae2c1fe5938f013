"""The online reference (a teacher run at every step through the one loop) and the cached path's
promise that it never builds the teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcache.augment import ViewPipeline, ViewSpec, derive_view_seed
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CheckpointError, ConfigError
from kdcache.models._checkpoint import load_checkpoint, save_checkpoint
from kdcache.train import LossConfig, TrainConfig, train_student
from kdcache.train._targets import OnlineTargets


@pytest.fixture
def small_teacher(tmp_path) -> str:
    """A seeded, randomly initialised cnn_small (another architecture than the cnn_tiny students)."""
    from kdcache.models import create_model

    torch.manual_seed(2)
    path = tmp_path / "small.pt"
    save_checkpoint(str(path), create_model("cnn_small", num_classes=3))
    return str(path)


def _rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cfg(tmp_path, data, name, **kw) -> TrainConfig:
    base = dict(data=DataConfig(source=data), out=str(tmp_path / name), model="cnn_tiny", epochs=2,
                batch_size=16, workers=0, warmup_epochs=0, val_split="test")
    base.update(kw)
    return TrainConfig(**base)


def test_a_cached_run_never_builds_the_teacher(tmp_path, tiny_h5, small_teacher, monkeypatch):
    from kdcache import _teacher as teacher_module
    from kdcache.models import _registry as registry

    cache = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=cache, teacher=TeacherSpec(weights=small_teacher),
                            views=2, view={"size": 16}, workers=0, block_size=16), progress=False,
                 log=lambda _m: None)

    def no_teacher(*_a, **_k):
        raise AssertionError("the teacher was built")

    real_build = registry._build

    def build_students_only(name, num_classes, kwargs):
        if name == "cnn_small":
            raise AssertionError("the teacher's architecture was created")
        return real_build(name, num_classes, kwargs)

    monkeypatch.setattr(teacher_module, "build_teacher", no_teacher)
    monkeypatch.setattr(registry, "_build", build_students_only)
    monkeypatch.setattr(torch, "load", _refusing_load(small_teacher, torch.load))
    for distill in ("soft", "hard", "none"):
        train_student(_cfg(tmp_path, tiny_h5, distill, cache=cache, loss=LossConfig(distill=distill)),
                      progress=False, log=lambda _m: None)
        assert "train/loss" in _rows(tmp_path / distill)[-1]
    # The guard is real: the online reference trips it.
    with pytest.raises(AssertionError, match="teacher was built"):
        train_student(_cfg(tmp_path, tiny_h5, "online", teacher=TeacherSpec(weights=small_teacher, name="cnn_small")),
                      progress=False, log=lambda _m: None)


def _refusing_load(path: str, real):
    def load(f, *a, **k):
        if str(f) == path:
            raise AssertionError("the teacher's weights were read")
        return real(f, *a, **k)
    return load


@pytest.mark.parametrize("distill", ["soft", "hard"])
def test_online_targets_are_the_teachers_output_on_the_views_the_student_saw(tmp_path, tiny_h5, small_teacher,
                                                                            monkeypatch, distill):
    seen: list[tuple] = []
    real_call = OnlineTargets.__call__

    def spy(self, batch, images):
        out = real_call(self, batch, images)
        seen.append((batch, images.clone(), {k: v.clone() for k, v in out.items()}))
        return out

    monkeypatch.setattr(OnlineTargets, "__call__", spy)
    cfg = _cfg(tmp_path, tiny_h5, distill, teacher=TeacherSpec(name="cnn_small", weights=small_teacher),
               loss=LossConfig(distill=distill), view={"size": 16, "flip_prob": 0.5}, seed=7)
    train_student(cfg, progress=False, log=lambda _m: None)

    rows = _rows(tmp_path / distill)
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert r["train/kd_loss"] > 0 and r["train/task_loss"] > 0 and "val/top1" in r
        assert 0.0 <= r["train/teacher_agreement"] <= 1.0

    # Every sample got a fresh view each epoch: view index = epoch, seeded by (seed, key, epoch).
    ds = DataConfig(source=tiny_h5).open()
    assert len(seen) == 2 * 3  # 48 samples / batch 16, two epochs
    for epoch in (0, 1):
        batches = seen[3 * epoch:3 * epoch + 3]
        idx = np.concatenate([b.indices for b, _, _ in batches])
        assert sorted(idx.tolist()) == list(range(48))
        for b, _, _ in batches:
            assert (b.views == epoch).all()
            assert b.seeds.tolist() == [derive_view_seed(7, ds.keys[i], epoch) for i in b.indices]

    # The targets are the teacher's output on exactly those images, rebuilt here from the recorded
    # parameters alone with an independently loaded teacher.
    teacher, _ = load_checkpoint(small_teacher)
    teacher.eval()
    _, extra = load_checkpoint(str(tmp_path / distill / "last.pt"))
    assert extra["online_teacher"]["name"] == "cnn_small" and extra["config"]["teacher"]["weights"] == small_teacher
    assert extra["config"]["cache"] is None
    pipeline = ViewPipeline(ViewSpec.from_dict(extra["view_spec"]))
    for batch, images, targets in seen:
        rebuilt = torch.stack([pipeline.apply(ds.get_image(int(i)), p) for i, p in zip(batch.indices, batch.params)])
        assert torch.equal(rebuilt, images)
        with torch.no_grad():
            want = teacher(rebuilt)
        torch.testing.assert_close(targets["logits"], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(targets["argmax"], want.argmax(1))
    flips = [p.flip for b, _, _ in seen for p in b.params]
    assert any(flips) and not all(flips)


def test_online_with_a_cache_uses_its_views_and_resume_keeps_the_teacher(tmp_path, tiny_h5, tiny_teacher,
                                                                         small_teacher):
    cache = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=cache, teacher=TeacherSpec(weights=tiny_teacher),
                            views=2, view={"size": 20}, workers=0, block_size=16), progress=False,
                 log=lambda _m: None)
    logs: list[str] = []
    cfg = _cfg(tmp_path, tiny_h5, "r", cache=cache, teacher=TeacherSpec(weights=small_teacher, name="cnn_small"),
               epochs=1, val_split=None)
    train_student(cfg, progress=False, log=logs.append)
    _, extra = load_checkpoint(str(tmp_path / "r" / "last.pt"))
    assert extra["view_spec"]["size"] == 20  # the cache's views, not the teacher's 16 px default
    assert any("not the teacher of" in m for m in logs)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    other = TeacherSpec(weights=tiny_teacher)
    with pytest.raises(CheckpointError, match="another `teacher`"):
        train_student(TrainConfig.from_dict({**cfg.to_dict(), "teacher": other.to_dict(), "epochs": 2,
                                             "resume": True}), progress=False, log=lambda _m: None)


def test_online_config_errors(tmp_path, tiny_h5, small_teacher, make_cache):
    spec = TeacherSpec(name="cnn_small", weights=small_teacher)
    with pytest.raises(ConfigError, match="cache"):
        train_student(_cfg(tmp_path, tiny_h5, "a"), progress=False)
    with pytest.raises(ConfigError, match="only used for distillation"):
        train_student(_cfg(tmp_path, tiny_h5, "b", teacher=spec, loss=LossConfig(distill="none")), progress=False)
    cache = make_cache(2, 16)
    with pytest.raises(ConfigError, match=r"conflict with `cache`.*size 8 \(asked by `size`\) != 16 \(cache\)"):
        train_student(_cfg(tmp_path, tiny_h5, "c", teacher=spec, cache=cache, view={"size": 8}), progress=False)
    # a preset that asks for other views than the cache's is refused, naming each differing option
    with pytest.raises(ConfigError, match=r"crop pad \(asked by `preset` cifar\) != rrc \(cache\)"):
        train_student(_cfg(tmp_path, tiny_h5, "d", cache=cache, view={"preset": "cifar"}), progress=False)
