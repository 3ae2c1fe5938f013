"""The format-3 view options on the command line: presets, timm's names, info, and their bad values."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache.cache import CacheStore


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def _dump(tiny_h5, tiny_teacher, out, *extra):
    return CliRunner().invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher-weights", tiny_teacher,
                                    "--out", str(out), "--views", "2", "--size", "16", "--workers", "0",
                                    "--no-progress", *extra])


def test_a_preset_with_overrides_is_recorded_printed_and_checked_by_students(tmp_path, tiny_h5, tiny_teacher):
    cache = tmp_path / "c.zarr"
    res = _dump(tiny_h5, tiny_teacher, cache, "--preset", "cifar", "--padding", "2", "--color-jitter", "0.3",
                "--reprob", "0.25", "--remode", "pixel")
    assert res.exit_code == 0, res.output
    assert "view ops: pad-crop 2 zero, flip 0.5, color-jitter 0.3 0.3 0.3 0, erasing 0.25 pixel x1" in res.output
    store = CacheStore.open(str(cache))
    spec = store.identity.view_spec
    assert (spec["crop"], spec["padding"], spec["color_jitter"], spec["reprob"]) == ("pad", 2, [0.3, 0.3, 0.3, 0.0],
                                                                                     0.25)
    assert store.attrs["config"]["view"]["preset"] == "cifar"
    assert set(store.attrs["software"]) == {"torch", "torchvision", "numpy"}
    assert {"jitter_order", "jitter_factor", "erase_box", "erase_seed"} <= set(store.layout.replay_names)
    info = CliRunner().invoke(cli, ["info", str(cache)])
    assert info.exit_code == 0, info.output
    assert "augment      pad-crop 2 zero, flip 0.5, color-jitter 0.3 0.3 0.3 0, erasing 0.25 pixel x1 " \
           "(bilinear) (preset cifar)" in info.output
    as_json = json.loads(CliRunner().invoke(cli, ["info", str(cache), "--json"]).output)
    assert as_json["view_preset"] == "cifar"
    # a student asking for the cache's own preset trains; one asking for another is refused by option
    train = ["train-student", "--data", tiny_h5, "--cache", str(cache), "--student", "cnn_tiny", "--epochs", "1",
             "--val-split", "none", "--workers", "0", "--no-progress"]
    ok = CliRunner().invoke(cli, [*train, "--out", str(tmp_path / "r1"), "--preset", "cifar", "--padding", "2"])
    assert ok.exit_code == 0, ok.output
    bad = _one_line(CliRunner().invoke(cli, [*train, "--out", str(tmp_path / "r2"), "--preset", "deit-cifar"]))
    assert "conflict with --cache" in bad and "auto_augment rand-m9-mstd0.5-inc1 (asked by --preset deit-cifar) " \
           "!= none (cache)" in bad and "padding 4 (asked by --preset deit-cifar) != 2 (cache)" in bad


def test_timm_named_options_reach_the_spec(tmp_path, tiny_h5, tiny_teacher):
    cache = tmp_path / "c.zarr"
    res = _dump(tiny_h5, tiny_teacher, cache, "--auto-augment", "rand-m7-n3-mstd1", "--three-augment",
                "--color-jitter", "0.1,0.2,0.3,0.05", "--recount", "2", "--reprob", "0.5", "--interpolation", "bicubic")
    assert res.exit_code == 0, res.output
    spec = CacheStore.open(str(cache)).identity.view_spec
    assert spec["auto_augment"] == "rand-m7-n3-mstd1" and spec["three_augment"] is True
    assert spec["color_jitter"] == [0.1, 0.2, 0.3, 0.05] and spec["recount"] == 2
    assert CacheStore.open(str(cache)).layout.specs["aa_op"][0] == (3,)


@pytest.mark.parametrize("extra,message", [
    (["--auto-augment", "rand-m9-q2"], "unknown or malformed RandAugment section 'q2'"),
    (["--auto-augment", "fancy"], "is not none, trivialaugment, autoaugment"),
    (["--reprob", "2"], "reprob must lie in [0, 1], got 2"),
    (["--crop", "pad", "--padding", "16", "--padding-mode", "reflect"], "padding 16 is too large"),
    (["--color-jitter", "0.1,0.2"], "is not one number or 4 comma-separated numbers"),
    (["--preset", "imagenet"], "'imagenet' is not one of"),
])
def test_bad_view_options_are_one_line_errors(tmp_path, tiny_h5, tiny_teacher, extra, message):
    out = tmp_path / "bad.zarr"
    line = _one_line(_dump(tiny_h5, tiny_teacher, out, *extra))
    assert message in line, line
    assert not out.exists()  # nothing half-written
