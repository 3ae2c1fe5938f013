"""Replay exactness for the format-3 ops, each alone and all together (mixed views included): the teacher on
a view rebuilt from the cache reproduces the cached logits, through ReplayViews with 0 and 2 workers, through
train-student's own batches, and for a 2-rank torchrun dump (which equals the one-process dump)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_support import assert_stores_equal, cli_run, run, torchrun_cmd
from torch.utils.data import DataLoader

from kdcache._views import ReplayViews, identity_collate
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, build_teacher, dump_teacher
from kdcache.engine._verify import default_atol, verify_cache
from kdcache.train import LossConfig, TrainConfig, train_student
from kdcache.train._schedule import epoch_views
from kdcache.train._stream import StreamedTargets

OPS = {
    "pad-reflect": {"crop": "pad", "padding": 3, "padding_mode": "reflect"},
    "randaugment": {"auto_augment": "rand-m9-mstd0.5-inc1"},
    "trivialaugment": {"auto_augment": "trivialaugment"},
    "autoaugment": {"auto_augment": "autoaugment"},
    "color-jitter": {"color_jitter": (0.4, 0.4, 0.4, 0.1)},
    "three-augment": {"three_augment": True},
    "erasing-pixel": {"reprob": 0.8, "remode": "pixel", "recount": 2},
    "erasing-rand": {"reprob": 0.8, "remode": "rand"},
    "bicubic": {"interpolation": "bicubic", "scale": (0.3, 1.0)},
    # all together, on mixed views: the partner gets its own recorded ops
    "all-mixed": {"crop": "pad", "padding": 2, "auto_augment": "rand-m9-mstd0.5-inc1", "color_jitter": (0.3, 0, 0, 0),
                  "three_augment": True, "reprob": 0.5, "remode": "pixel", "interpolation": "bicubic",
                  "mix": "both"},
    "deit-cifar": {"preset": "deit-cifar", "padding": 2},
}


def _dump(tiny_h5, teacher, out, view, *, workers=2, views=2):
    cfg = DumpConfig(data=DataConfig(source=tiny_h5), out=str(out), teacher=TeacherSpec(weights=teacher),
                     views=views, seed=7, view={"size": 16, **view}, batch_size=8, workers=workers, block_size=16)
    dump_teacher(cfg, progress=False, log=lambda _m: None)
    return CacheStore.open(str(out))


def _teacher_on_replay(store, teacher_path, tiny_h5, *, workers, epoch):
    ds = DataConfig(source=tiny_h5).open()
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    arrays = store.read_views(epoch_views(store.done_units(), epoch=epoch, seed=0))
    cached = arrays.pop("logits").astype(np.float32)
    loader = DataLoader(ReplayViews(ds, pipeline, arrays), batch_size=7, shuffle=True, num_workers=workers,
                        collate_fn=identity_collate)
    teacher = build_teacher(TeacherSpec(weights=teacher_path), num_classes=ds.num_classes).model
    out = np.zeros_like(cached)
    with torch.inference_mode():
        for batch in loader:
            out[batch.indices] = teacher(batch.images).numpy()
    return out, cached


@pytest.mark.parametrize("name", list(OPS))
def test_teacher_on_replayed_strong_views_matches_the_cache(tmp_path, tiny_h5, tiny_teacher, name):
    # dumps with 2 workers for the combined specs (each op alone: in-process, faster)
    store = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", OPS[name],
                  workers=2 if name in ("all-mixed", "deit-cifar") else 0)
    spec = ViewSpec.from_dict(store.identity.view_spec)
    assert spec.is_strong or name == "bicubic"
    assert store.attrs["kdcache_format"] == 3
    for workers, epoch in ((0, 0), (2, 1)) if name in ("all-mixed", "deit-cifar", "randaugment") else ((0, 1),):
        replayed, cached = _teacher_on_replay(store, tiny_teacher, tiny_h5, workers=workers, epoch=epoch)
        assert np.abs(replayed - cached).max() <= default_atol(float(np.abs(replayed).max()))


def test_a_wrong_op_parameter_would_not_match(tmp_path, tiny_h5, tiny_teacher):
    """Guards the test above: replaying with the erasing boxes of another view breaks the match."""
    store = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", {"reprob": 1.0, "remode": "pixel"})
    ds = DataConfig(source=tiny_h5).open()
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    a0 = store.read_views([0] * store.num_blocks)
    a1 = store.read_views([1] * store.num_blocks)
    a0_wrong = {**a0, "erase_box": a1["erase_box"], "erase_seed": a1["erase_seed"]}
    teacher = build_teacher(TeacherSpec(weights=tiny_teacher), num_classes=3).model
    with torch.inference_mode():
        x = ReplayViews(ds, pipeline, a0_wrong).__getitems__(list(range(len(ds)))).images
        wrong = teacher(x).numpy()
    assert np.abs(wrong - a0["logits"].astype(np.float32)).max() > 1e-2


@pytest.mark.parametrize("workers", [0, 2])
def test_train_student_batches_are_the_views_the_teacher_saw(tmp_path, tiny_h5, tiny_teacher, monkeypatch, workers):
    store = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", OPS["all-mixed"], views=3)
    teacher = build_teacher(TeacherSpec(weights=tiny_teacher), num_classes=3).model
    checked = []
    original = StreamedTargets.__call__

    def checking(self, batch, images):
        t = original(self, batch, images)
        with torch.inference_mode():
            fresh = teacher(images.float())
        tol = default_atol(float(fresh.abs().max()))
        checked.append(float((fresh - t["logits"].to(fresh.device)).abs().max()) <= tol)
        return t

    monkeypatch.setattr(StreamedTargets, "__call__", checking)
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "run"), model="cnn_tiny", cache=store.path,
                      epochs=3, batch_size=16, workers=workers, val_split=None, device="cpu",
                      loss=LossConfig(distill="soft"))
    train_student(cfg, progress=False, log=lambda _m: None)
    assert len(checked) == 3 * 3 and all(checked)


@pytest.mark.slow
def test_torchrun_strong_dump_equals_a_one_process_dump_and_replays(world, tmp_path):
    extra = ["--preset", "deit-cifar", "--padding", "4", "--three-augment", "--color-jitter", "0.2"]
    ref, out = tmp_path / "one.zarr", tmp_path / "two.zarr"
    one = cli_run(world.dump_args(ref, views=2, extra=extra))  # the one-process reference, in this process
    assert one.returncode == 0, one.stdout + one.stderr
    two = run(torchrun_cmd(2, world.dump_args(out, views=2, extra=extra)))
    assert two.returncode == 0, two.stdout + two.stderr
    assert_stores_equal(out, ref)
    report = verify_cache(str(out), TeacherSpec(weights=world.teacher), DataConfig(source=world.data), samples=64,
                          device="cpu")
    assert report["ok"], report["failures"]


def test_verify_reports_replay_drift_under_other_kernel_versions(tmp_path, tiny_h5, tiny_teacher, monkeypatch):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    from kdcache.augment import kernel_versions
    from kdcache.engine import _verify

    store = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", OPS["randaugment"], workers=0)
    report = verify_cache(store.path, TeacherSpec(weights=tiny_teacher), DataConfig(source=tiny_h5), samples=16,
                          device="cpu")
    assert report["ok"] and report["software"]["differs"] == []
    assert report["software"]["dump"] == report["software"]["replay"] == kernel_versions()
    # replayed as if under another torchvision (the recorded versions are sealed: an edit would be refused)
    monkeypatch.setattr(_verify, "kernel_versions", lambda: {**kernel_versions(), "torchvision": "9.9.9"})
    res = CliRunner().invoke(cli, ["verify", store.path, "--teacher-weights", tiny_teacher, "--samples", "16",
                                   "--data", tiny_h5])
    assert res.exit_code == 0, res.output
    assert "software   replayed with torchvision 9.9.9 (cache made with " in res.output
    assert "replay drifts by up to" in res.output


def test_the_online_reference_and_teacher_training_draw_the_preset_views(tmp_path, tiny_h5, tiny_teacher):
    from kdcache.models._checkpoint import load_checkpoint
    from kdcache.train import train_teacher

    view = {"preset": "deit-cifar", "padding": 2, "size": 16}
    online = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "online"), model="cnn_tiny",
                         teacher=TeacherSpec(weights=tiny_teacher), view=view, epochs=1, batch_size=16, workers=0,
                         val_split=None, device="cpu", loss=LossConfig(distill="hard"))
    train_student(online, progress=False, log=lambda _m: None)
    teacher = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "teacher"), model="cnn_tiny",
                          view=view, epochs=1, batch_size=16, workers=0, val_split=None, device="cpu")
    train_teacher(teacher, progress=False, log=lambda _m: None)
    for name in ("online", "teacher"):
        spec = load_checkpoint(str(tmp_path / name / "last.pt"))[1]["view_spec"]
        assert (spec["crop"], spec["padding"], spec["auto_augment"], spec["reprob"], spec["mix"]) == \
               ("pad", 2, "rand-m9-mstd0.5-inc1", 0.25, "both"), name
