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
    ok = CliRunner().invoke(cli, [*train, "--out", str(tmp_path / "r1"), "--preset", "cifar", "--padding", "2",
                                  "--color-jitter", "0.3", "--reprob", "0.25", "--remode", "pixel"])
    assert ok.exit_code == 0, ok.output
    # the preset alone states no jitter and no erasing (its defaults): not the views this cache holds (issue 29)
    partial = _one_line(CliRunner().invoke(cli, [*train, "--out", str(tmp_path / "r3"), "--preset", "cifar",
                                                 "--padding", "2"]))
    assert "color_jitter 0 0 0 0 (asked by --preset cifar, its default) != 0.3 0.3 0.3 0 (cache)" in partial
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


# ---------------------------------------------------------------- issue 29: options that match
def _deit_cifar(tmp_path, tiny_h5, tiny_teacher):
    cache = tmp_path / "dc.zarr"
    res = _dump(tiny_h5, tiny_teacher, cache, "--preset", "deit-cifar", "--block-size", "16")
    assert res.exit_code == 0, res.output
    return cache


def _train(tiny_h5, cache, out, *extra):
    return CliRunner().invoke(cli, ["train-student", "--data", tiny_h5, "--cache", str(cache), "--student",
                                    "cnn_tiny", "--epochs", "1", "--val-split", "none", "--workers", "0",
                                    "--no-progress", "--out", str(out), *extra])


def test_a_preset_states_its_defaults_against_a_cache(tmp_path, tiny_h5, tiny_teacher):
    """--preset cifar on a deit-cifar cache: refused, naming each option and the cache's value; nothing trained."""
    cache = _deit_cifar(tmp_path, tiny_h5, tiny_teacher)
    line = _one_line(_train(tiny_h5, cache, tmp_path / "r", "--preset", "cifar"))
    for part in ("auto_augment none (asked by --preset cifar, its default) != rand-m9-mstd0.5-inc1 (cache)",
                 "reprob 0.0 (asked by --preset cifar, its default) != 0.25 (cache)",
                 "mix none (asked by --preset cifar, its default) != both (cache)"):
        assert part in line, line
    assert not (tmp_path / "r" / "config.json").exists()
    line = _one_line(_train(tiny_h5, cache, tmp_path / "r", "--reprob", "0.5"))
    assert "reprob 0.5 (asked by --reprob) != 0.25 (cache)" in line, line


@pytest.mark.parametrize("extra", [[], ["--preset", "deit-cifar"], ["--preset", "deit-cifar", "--reprob", "0.25"]])
def test_a_cached_run_records_the_cache_views(tmp_path, tiny_h5, tiny_teacher, extra):
    cache = _deit_cifar(tmp_path, tiny_h5, tiny_teacher)
    res = _train(tiny_h5, cache, tmp_path / "r", *extra)
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "r" / "config.json").read_text())
    view = rec["config"]["view"]
    assert view["preset"] == "deit-cifar" and view["auto_augment"] == "rand-m9-mstd0.5-inc1"
    assert (view["crop"], view["reprob"], view["mix"], view["size"]) == ("pad", 0.25, "both", 16)
    assert {k: v for k, v in view.items() if k != "preset"} == rec["view_spec"]


def test_add_views_uses_the_cache_views_and_checks_the_options_given(tmp_path, tiny_h5, tiny_teacher):
    cache = _deit_cifar(tmp_path, tiny_h5, tiny_teacher)
    grow = ["--block-size", "16", "--add-views", "1"]
    bad = _one_line(_dump(tiny_h5, tiny_teacher, cache, *grow, "--preset", "cifar"))
    assert "view options conflict with the cache" in bad and \
        "auto_augment none (asked by --preset cifar, its default) != rand-m9-mstd0.5-inc1 (cache)" in bad, bad
    assert CacheStore.open(str(cache)).num_views == 2
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--out",
                                   str(cache), "--block-size", "16", "--add-views", "1", "--workers", "0",
                                   "--no-progress"])  # no view options at all: the cache's own views
    assert res.exit_code == 0, res.output
    assert "(from the cache " in res.output and "rand-m9-mstd0.5-inc1" in res.output
    assert CacheStore.open(str(cache)).num_views == 3
    ok = _dump(tiny_h5, tiny_teacher, cache, "--block-size", "16", "--preset", "deit-cifar", "--views", "3")
    assert ok.exit_code == 0, ok.output  # agreeing options: a plain resume


def test_verify_takes_no_view_options(tmp_path, tiny_h5, tiny_teacher):
    """verify always replays the cache's own views: a view option, as a flag or in a config file, is refused."""
    cache = _deit_cifar(tmp_path, tiny_h5, tiny_teacher)
    res = CliRunner().invoke(cli, ["verify", str(cache), "--teacher-weights", tiny_teacher, "--preset", "cifar"])
    assert res.exit_code != 0 and "No such option '--preset'" in res.output, res.output
    conf = tmp_path / "v.json"
    conf.write_text(json.dumps({"preset": "cifar"}))
    res = CliRunner().invoke(cli, ["verify", str(cache), "--config", str(conf), "--teacher-weights", tiny_teacher])
    assert res.exit_code != 0 and "unknown option 'preset' for 'verify'" in res.output, res.output
