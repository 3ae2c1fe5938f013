"""Which teachers a dump accepts (real or explicitly seeded weights) and the views it defaults to."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache.augment import ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, build_teacher, dump_teacher
from kdcache.errors import ConfigError, ModelError
from kdcache.models import create_model
from kdcache.models._checkpoint import save_checkpoint


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def test_teacher_without_weights_is_refused():
    with pytest.raises(ModelError, match="no weights.*`teacher_weights`.*`random_init`"):
        build_teacher(TeacherSpec(name="cnn_tiny"), num_classes=3)


def test_seeded_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_teacher(TeacherSpec(name="cnn_tiny", random_init=True, init_seed=7), num_classes=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(999)  # the caller's global state does not matter
    b = build_teacher(TeacherSpec(name="cnn_tiny", random_init=True, init_seed=7), num_classes=3)
    c = build_teacher(TeacherSpec(name="cnn_tiny", random_init=True, init_seed=8), num_classes=3)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.identity()["random_init_seed"] == 7 and c.identity()["random_init_seed"] == 8
    w = build_teacher(TeacherSpec(name="cnn_tiny", random_init=True), num_classes=3)
    assert w.identity()["random_init_seed"] == 0


@pytest.mark.parametrize("kw,needle", [
    (dict(name="cnn_tiny", weights="t.pt", random_init=True), "exclude"),
    (dict(name="cnn_tiny", kwargs={"pretrained": True}, random_init=True), "pretrained"),
    (dict(name="cnn_tiny", init_seed=3), "`init_seed` only applies with `random_init`"),
    (dict(name="cnn_tiny", random_init=1), "must be true or false"),
])
def test_contradicting_teacher_settings_are_refused(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        TeacherSpec(**kw)


def test_random_init_spec_round_trips():
    s = TeacherSpec(name="cnn_tiny", random_init=True, init_seed=5)
    assert TeacherSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_cli_refuses_weightless_teacher_in_one_line(tmp_path, tiny_h5):
    out = tmp_path / "c.zarr"
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--out", str(out),
                                   "--no-progress", "--workers", "0"])
    line = _one_line(res)
    assert "no weights" in line and "--teacher-weights" in line and "--random-init" in line
    assert not out.exists()
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--init-seed", "2",
                                   "--out", str(out), "--no-progress"])
    assert "--init-seed only applies with --random-init" in _one_line(res)


def _dump(data, teacher: TeacherSpec, out, **kw):
    cfg = DumpConfig(data=DataConfig(source=data), out=str(out), teacher=teacher, views=1, workers=0, **kw)
    lines: list[str] = []
    return dump_teacher(cfg, progress=False, log=lines.append), lines


def test_checkpoint_views_are_the_dump_default_and_reported(tmp_path, tiny_h5):
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=3)  # architecture default: 32 px, its own mean/std
    trained = ViewSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic",
                       scale=(0.5, 1.0))
    ckpt = tmp_path / "t.pt"
    save_checkpoint(ckpt, model, view_spec=trained.to_dict())

    s, lines = _dump(tiny_h5, TeacherSpec(weights=str(ckpt)), tmp_path / "a.zarr")
    spec = ViewSpec.from_dict(CacheStore.open(s.out).identity.view_spec)
    assert (spec.size, spec.mean, spec.std, spec.interpolation) == (16, trained.mean, trained.std, "bicubic")
    assert spec.scale == ViewSpec().scale  # the augmentation is the dump's own choice, not the training's
    assert any(ln.startswith("view input: size 16") and str(ckpt) in ln for ln in lines), lines
    teacher_attrs = CacheStore.open(s.out).attrs["teacher"]
    assert teacher_attrs["input_size"] == 16 and str(ckpt) in teacher_attrs["input_from"]

    # An explicit flag still wins, and the report says which value came from where.
    s, lines = _dump(tiny_h5, TeacherSpec(weights=str(ckpt)), tmp_path / "b.zarr", view={"size": 24})
    assert ViewSpec.from_dict(CacheStore.open(s.out).identity.view_spec).size == 24
    line = next(ln for ln in lines if ln.startswith("view input:"))
    assert "size 24 (set explicitly)" in line and "interpolation bicubic" in line

    # A checkpoint without recorded views: the architecture's defaults, and the report says so.
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, model)
    s, lines = _dump(tiny_h5, TeacherSpec(weights=str(plain)), tmp_path / "c.zarr")
    assert ViewSpec.from_dict(CacheStore.open(s.out).identity.view_spec).size == 32
    assert any("cnn_tiny architecture's default" in ln for ln in lines), lines


def test_train_teacher_then_dump_uses_the_training_size(tmp_path, tiny_h5):
    """The issue's case through the CLI: a teacher trained at 16 px is dumped at 16 px, not its 32 px default."""
    runner = CliRunner()
    res = runner.invoke(cli, ["train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16",
                              "--epochs", "1", "--val-split", "none", "--out", str(tmp_path / "t"),
                              "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    cache = tmp_path / "c.zarr"
    res = runner.invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher-weights", str(tmp_path / "t" / "best.pt"),
                              "--views", "1", "--out", str(cache), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "view input: size 16" in res.output and "(from the views " in res.output
    assert f"the views {tmp_path / 't' / 'best.pt'} was trained on)" in res.output
    info = runner.invoke(cli, ["info", str(cache)]).output
    assert "input 16" in info and "size 16" in info
