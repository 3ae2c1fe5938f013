"""Every command through click's CliRunner, including the bad-input paths."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache.models import create_model


def run(*args: str, ok: bool = True):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = Path(root) / f
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def dump_args(data, teacher, out, *extra):
    return ["dump-teacher", "--data", data, "--teacher-weights", teacher, "--out", out, "--size", "16",
            "--workers", "0", "--block-size", "16", "--no-progress", *extra]


@pytest.fixture
def cache(tmp_path, tiny_h5, tiny_teacher) -> str:
    out = str(tmp_path / "c.zarr")
    res = run(*dump_args(tiny_h5, tiny_teacher, out, "--views", "2"))
    assert "samples    48" in res.output and "views      2" in res.output
    return out


def test_help_of_every_command():
    from kdcache.cli.main import COMMANDS

    for cmd in ("", *COMMANDS):
        res = run(*(cmd.split() + ["--help"]))
        assert "Usage:" in res.output and (not cmd or f" {cmd} [OPTIONS]" in res.output)
        if cmd:
            assert cli.get_command(None, cmd).name == cmd


def test_help_and_usage_errors_answer_without_importing_torch():
    """`kdcache`, `--help` of the group and of every command, `--version`, a mistyped command and a bad option
    value import no torch, torchvision, zarr, h5py or numpy (seconds on a loaded machine): commands import the
    library when they run."""
    import subprocess
    import sys

    from kdcache.cli.main import COMMANDS

    probe = ("import sys\nfrom kdcache.cli.main import main\nsys.argv = ['kdcache'] + sys.argv[1:]\ntry:\n    main()\n"
             "finally:\n    heavy = sorted(m for m in ('torch', 'torchvision', 'zarr', 'h5py', 'numpy') if m in sys.modules)\n"
             "    print('heavy:', heavy, file=sys.stderr)")
    cases = [([], 2), (["--help"], 0), (["--version"], 0), (["dump-tacher"], 2),
             (["train-student", "--epochs", "many"], 2), (["dump-teacher", "--precision", "fp8"], 2),
             *(([name, "--help"], 0) for name in COMMANDS)]
    for argv, code in cases:
        res = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert res.returncode == code and "heavy: []" in res.stderr, (argv, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr, (argv, res.stderr)
        if argv in ([], ["--help"]):
            assert all(name in res.stdout + res.stderr for name in COMMANDS)
        if argv == ["dump-tacher"]:
            assert "No such command 'dump-tacher'" in res.stderr
        if argv[1:] == ["--help"]:
            assert f"kdcache {argv[0]} [OPTIONS]" in res.stdout, res.stdout


def test_info_reads_a_cache_without_torch(cache):
    """`kdcache info` reads a cache's arrays with zarr and numpy: torch and torchvision are never imported."""
    import subprocess
    import sys

    probe = ("import sys\nfrom kdcache.cli.main import main\nsys.argv = ['kdcache'] + sys.argv[1:]\ntry:\n    main()\n"
             "finally:\n    print('heavy:', sorted(m for m in ('torch', 'torchvision') if m in sys.modules), file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", probe, "info", cache, "--json"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "heavy: []" in res.stderr, res.stderr
    assert json.loads(res.stdout)["num_views"] == 2


def test_dump_info_train_evaluate(tmp_path, tiny_h5, cache):
    info = json.loads(run("info", cache, "--json").output)
    assert info["num_samples"] == 48 and info["num_views"] == 2 and info["done_fraction"] == 1.0
    assert info["bytes_per_view"] > 0
    assert "coverage     100.0% done" in run("info", cache).output
    out = tmp_path / "run"
    run("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--epochs", "2",
        "--batch-size", "16", "--workers", "0", "--out", out, "--no-progress")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and "train/kd_loss" in rows[0]
    assert not any(k.startswith("val/") for k in rows[0])  # no split selects best.pt unless one is held out
    assert json.loads((out / "config.json").read_text())["config"]["cache"] == cache
    res = json.loads(run("evaluate", out / "best.pt", "--data", tiny_h5, "--workers", "0", "--json").output)
    assert res["images"] == 24 and 0 <= res["top1"] <= 100 and res["split"] == "test"


def test_evaluate_defaults_to_the_checkpoints_data_and_refuses_other_classes(tmp_path, tiny_h5, cache):
    import shutil

    import h5py

    out = tmp_path / "run"
    res = run("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--epochs", "1",
              "--batch-size", "16", "--workers", "0", "--out", out, "--no-progress")
    test = json.loads((out / "test.json").read_text())
    assert f"test top-1 {test['top1']:.2f}% (test, best.pt)" in res.output
    text = run("evaluate", out / "best.pt", "--workers", "0").output  # no --data: the run's own, test split
    assert f"on {tiny_h5} [test]: top-1 {test['top1']:.2f}%" in text and "(24 images)" in text
    other = tmp_path / "other.h5"
    shutil.copy(tiny_h5.removeprefix("hdf5:"), other)
    with h5py.File(other, "a") as f:  # same shape and class count, other classes
        f.attrs["class_names"] = ["cat", "dog", "bird"]
    bad = run("evaluate", out / "best.pt", "--data", f"hdf5:{other}", "--workers", "0", ok=False)
    assert bad.exit_code == 1 and "was trained on the classes class0, class1, class2" in bad.output
    assert "Traceback" not in bad.output
    bad = run("evaluate", "--model", "cnn_tiny", "--random-init", "--workers", "0", ok=False)
    assert bad.exit_code == 2 and "--model needs --data" in bad.output


def test_config_file_supplies_options_and_flags_override(tmp_path, tiny_h5, cache):
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'cache = "{cache}"\ndata = "{tiny_h5}"\nstudent = "cnn_tiny"\nepochs = 3\n'
                   f'batch-size = 16\nworkers = 0\nval-split = "none"\n')
    out = tmp_path / "run"
    run("train-student", "--config", cfg, "--epochs", "1", "--out", out, "--no-progress")
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["epochs"] == 1 and saved["batch_size"] == 16 and saved["val_split"] is None
    yml = tmp_path / "bad.yaml"
    yml.write_text("no_such_option: 1\n")
    res = run("train-student", "--config", yml, "--out", out, ok=False)
    assert res.exit_code == 2 and "unknown option" in res.output


def test_dump_refuses_other_teacher_and_leaves_cache_untouched(tmp_path, tiny_h5, tiny_teacher, cache):
    before = tree_digest(Path(cache))
    res = run("dump-teacher", "--data", tiny_h5, "--teacher", "cnn_small", "--random-init", "--out", cache,
              "--size", "16", "--workers", "0", "--no-progress", ok=False)
    assert res.exit_code == 1 and "teacher.name" in res.output and "Traceback" not in res.output
    res = run(*dump_args(tiny_h5, tiny_teacher, cache, "--seed", "5"), ok=False)
    assert res.exit_code == 1 and "seed" in res.output
    res = run(*dump_args(tiny_h5, tiny_teacher, cache, "--targets", "topk:2"), ok=False)
    assert res.exit_code == 1 and "targets" in res.output
    assert tree_digest(Path(cache)) == before


def test_dump_views_mismatch_and_add_views(tmp_path, tiny_h5, tiny_teacher, cache):
    args = dump_args(tiny_h5, tiny_teacher, cache)
    res = run(*args, "--views", "3", ok=False)
    assert res.exit_code == 1 and "--add-views" in res.output
    run(*args, "--add-views", "1")
    assert json.loads(run("info", cache, "--json").output)["num_views"] == 3
    run(*args)  # the same command again: nothing pending, still fine


def test_train_student_refuses_other_data(tmp_path, tiny_h5, cache):
    res = run("train-student", "--cache", cache, "--data", tiny_h5, "--limit", "30", "--student", "cnn_tiny",
              "--out", tmp_path / "r", "--workers", "0", ok=False)
    assert res.exit_code == 1 and "manifest_sha256" in res.output


@pytest.mark.parametrize("args,needle", [
    (["info", "nope.zarr"], "cache not found"),
    (["dump-teacher", "--data", "hdf5:missing.h5", "--teacher", "cnn_tiny", "--out", "x.zarr"], "missing.h5"),
    (["dump-teacher", "--data", "digits", "--teacher", "no_such_model", "--out", "x.zarr"], "unknown model"),
    (["dump-teacher", "--data", "digits", "--split", "nosplit", "--teacher", "cnn_tiny", "--out", "x.zarr"],
     "nosplit"),
    (["dump-teacher", "--data", "digits", "--teacher", "cnn_tiny", "--targets", "topk:0", "--out", "x.zarr"],
     "topk"),
    (["train-student", "--cache", "nope.zarr", "--data", "digits", "--student", "cnn_tiny", "--out", "r"],
     "cache not found"),
    (["evaluate", "missing.pt"], "missing.pt"),
])
def test_bad_input_gives_one_line_error(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    res = run(*args, ok=False)
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_a_text_file_as_teacher_weights_is_a_one_line_error(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("e: the teacher was fine-tuned for 3 epochs\n")
    res = run("dump-teacher", "--data", "digits", "--limit", "8", "--teacher", "cnn_tiny", "--teacher-weights",
              notes, "--out", tmp_path / "x.zarr", "--workers", "0", "--no-progress", ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "notes.txt is not a weights file" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_teacher_weights_from_a_checkpoint_directory(tmp_path):
    import torch
    from safetensors.torch import save_file

    from kdcache.engine import TeacherSpec, build_teacher

    torch.manual_seed(4)
    state = create_model("cnn_tiny", num_classes=10).state_dict()
    (tmp_path / "hub-style").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "hub-style" / "model.safetensors")
    out = tmp_path / "c.zarr"
    run("dump-teacher", "--data", "digits", "--limit", "8", "--teacher", "cnn_tiny", "--teacher-weights",
        tmp_path / "hub-style", "--out", out, "--size", "16", "--views", "1", "--workers", "0", "--no-progress")
    info = json.loads(run("info", out, "--json").output)
    want = build_teacher(TeacherSpec(name="cnn_tiny", weights=str(tmp_path / "hub-style")), num_classes=10)
    assert info["teacher"]["weights_sha256"] == want.weights_sha256


def test_dump_into_unwritable_location(tmp_path, tiny_h5, tiny_teacher):
    (tmp_path / "afile").write_text("not a directory")
    res = run(*dump_args(tiny_h5, tiny_teacher, str(tmp_path / "afile" / "c.zarr")), ok=False)
    assert res.exit_code == 1 and "cannot create" in res.output


def test_train_teacher_writes_a_checkpoint_dump_accepts(tmp_path, tiny_h5):
    out = tmp_path / "t"
    run("train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16", "--epochs", "1",
        "--batch-size", "16", "--workers", "0", "--out", out, "--no-progress")
    run(*dump_args(tiny_h5, str(out / "best.pt"), str(tmp_path / "c.zarr")))


def test_models_lists_registered_models():
    rows = json.loads(run("models", "--tag", "test", "--flops", "--json").output)
    names = {r["name"] for r in rows}
    assert "deit_test_distilled" in names and all(r["params"] > 0 for r in rows)
    # without --flops nothing is built: names, tags and descriptions only
    quick = json.loads(run("models", "--tag", "test", "--json").output)
    assert {r["name"] for r in quick} == names and all(r["params"] is None and r["gflops"] is None for r in quick)
    assert all(r["description"] for r in quick)
    res = run("models", "--input-size", "64", ok=False)
    assert res.exit_code == 2 and "--input-size needs --flops" in res.output


def test_help_groups_options_in_sections_and_view_options_come_from_viewspec():
    import dataclasses

    from kdcache.augment import ViewSpec

    for cmd in ("dump-teacher", "train-teacher"):
        out = run(cmd, "--help").output
        for field in dataclasses.fields(ViewSpec):  # every view setting has its flag, antialias included
            assert "--" + field.name.replace("_", "-") in out, (cmd, field.name)
        assert all(f"\n{h}" in out for h in ("View (", "Runtime:", "Data:", "Options:"))
    assert "\nTraining:" in run("train-student", "--help").output


def test_view_flags_reach_the_cache_view_spec(tmp_path, tiny_h5, tiny_teacher):
    out = str(tmp_path / "c.zarr")
    run(*dump_args(tiny_h5, tiny_teacher, out, "--views", "1", "--no-antialias", "--mean", "0.5", "0.5", "0.5",
                   "--scale", "0.5", "1"))
    spec = json.loads(run("info", out, "--json").output)["view_spec"]["spec"]
    assert spec["antialias"] is False and spec["mean"] == [0.5, 0.5, 0.5] and spec["scale"] == [0.5, 1.0]


@pytest.mark.parametrize("value,why", [("2.7", "must be an integer"), ("true", "must be an integer"),
                                       ('"4"', "must be an integer")])
def test_config_file_values_of_the_wrong_type_are_refused(tmp_path, value, why):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"views = {value}\nout = 'x.zarr'\n")
    res = run("dump-teacher", "--config", cfg, ok=False)
    assert res.exit_code == 2 and why in res.output and "Traceback" not in res.output


def test_library_messages_name_the_command_line_flag(tmp_path, tiny_h5, tiny_teacher):
    res = run(*dump_args(tiny_h5, tiny_teacher, str(tmp_path / "new.zarr"), "--add-views", "2"), ok=False)
    assert res.exit_code == 1 and "--add-views needs an existing cache" in res.output


def test_student_arg_reaches_the_constructor_and_the_checkpoint(tmp_path, tiny_h5, cache):
    from kdcache.models import model_cfg
    from kdcache.models._checkpoint import load_checkpoint

    out = tmp_path / "run"
    run("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--student-arg", "width=4",
        "--epochs", "1", "--batch-size", "16", "--workers", "0", "--val-split", "none", "--out", out,
        "--no-progress")
    model, _ = load_checkpoint(str(out / "last.pt"))
    assert model_cfg(model).kwargs["width"] == 4
    res = run("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--student-arg",
              "no_such_arg=1", "--out", tmp_path / "r2", "--workers", "0", ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_train_student_with_an_online_teacher_and_no_cache(tmp_path, tiny_h5, tiny_teacher):
    assert "forward pass at every step" in " ".join(run("train-student", "--help").output.split())
    out = tmp_path / "online"
    run("train-student", "--online-teacher", "cnn_tiny", "--teacher-weights", tiny_teacher, "--data", tiny_h5,
        "--student", "cnn_tiny", "--distill", "hard", "--size", "16", "--epochs", "1", "--batch-size", "16",
        "--workers", "0", "--out", out, "--no-progress")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train/teacher_agreement" in row and row["train/kd_loss"] > 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["teacher"]["name"] == "cnn_tiny" and saved["online_teacher"]["weights_sha256"]
    assert saved["view_spec"]["size"] == 16


@pytest.mark.parametrize("args,needle", [
    ([], "--online-teacher"),
    (["--teacher-weights", "{teacher}"], "need --online-teacher"),
    (["--online-teacher", "cnn_tiny", "--teacher-weights", "{teacher}", "--no-distill"], "distillation"),
    (["--online-teacher", "no_such_model"], "unknown model"),
    (["--cache", "{cache}", "--size", "8"], "conflict with --cache"),
])
def test_train_student_online_bad_input(tmp_path, tiny_h5, tiny_teacher, cache, args, needle):
    args = [a.format(teacher=tiny_teacher, cache=cache) for a in args]
    res = run("train-student", "--data", tiny_h5, "--student", "cnn_tiny", "--workers", "0",
              "--out", tmp_path / "r", *args, ok=False)
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output


def test_evaluate_a_public_checkpoint_by_model_name(shared_cifar, shared_weights):
    weights = shared_weights / "resnet56-4bfd9763.th"
    if not weights.exists():
        pytest.skip(f"public weights not found: {weights}")
    res = json.loads(run("evaluate", "--model", "cifar_resnet56", "--weights", weights, "--data", f"hdf5:{shared_cifar}",
                         "--split", "test", "--limit", "500", "--workers", "0", "--json").output)
    # 83.2% on the full test split; a 500-image stratified subset lands within a few points of it.
    assert res["images"] == 500 and abs(res["top1"] - 83.2) < 5, res
    assert res["model"] == "cifar_resnet56" and res["view_size"] == 32


def test_evaluate_by_model_name_with_view_overrides_and_random_init(tmp_path, tiny_h5, tiny_teacher):
    import torch

    from kdcache.models._checkpoint import load_checkpoint

    # A foreign file: the teacher's bare state dict, keys prefixed as DataParallel saves them.
    model, _ = load_checkpoint(tiny_teacher)
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, bare)
    common = ["--data", tiny_h5, "--workers", "0", "--json"]
    by_name = json.loads(run("evaluate", "--model", "cnn_tiny", "--weights", bare, *common).output)
    by_ckpt = json.loads(run("evaluate", tiny_teacher, *common).output)
    assert by_name["top1"] == by_ckpt["top1"] and by_name["loss"] == pytest.approx(by_ckpt["loss"], rel=1e-5)
    bigger = json.loads(run("evaluate", "--model", "cnn_tiny", "--weights", bare, "--size", "24", *common).output)
    assert bigger["view_size"] == 24 and bigger["loss"] != by_name["loss"]
    init = json.loads(run("evaluate", "--model", "cnn_tiny", "--random-init", "--model-arg", "width=4",
                          *common).output)
    assert init["weights"] is None and init["images"] == 24
    text = run("evaluate", "--model", "cnn_tiny", "--weights", bare, "--data", tiny_h5, "--workers", "0").output
    assert text.startswith("cnn_tiny (") and "top-1" in text


@pytest.mark.parametrize("args,needle", [
    (["{ckpt}", "--model", "cnn_tiny", "--weights", "{ckpt}"], "not both"),
    ([], "CHECKPOINT"),
    (["--model", "cnn_tiny"], "--random-init"),
    (["--model", "cnn_tiny", "--weights", "{ckpt}", "--random-init"], "exclude"),
    (["{ckpt}", "--size", "8"], "--size only apply with --model"),
    (["{ckpt}", "--mean", "0", "0", "0"], "--mean only apply"),
    (["--model", "cnn_tiny", "--weights", "nope.th"], "nope.th"),
    (["--model", "cnn_small", "--weights", "{ckpt}"], "cnn_tiny"),
    (["--model", "cifar_resnet20", "--weights", "{bad}"], "bad.th"),
])
def test_evaluate_bad_input_gives_one_line_error(tmp_path, monkeypatch, tiny_h5, tiny_teacher, args, needle):
    bad = tmp_path / "bad.th"
    bad.write_text("not a checkpoint")
    monkeypatch.chdir(tmp_path)
    args = [a.format(ckpt=tiny_teacher, bad=bad) for a in args]
    res = run("evaluate", *args, "--data", tiny_h5, "--workers", "0", ok=False)
    assert res.exit_code != 0 and needle in res.output and "Traceback" not in res.output, res.output


def test_views_per_image_through_the_cli(tmp_path, tiny_h5, cache):
    out = tmp_path / "run"
    run("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--views-per-image", "2",
        "--epochs", "2", "--batch-size", "16", "--workers", "0", "--val-split", "none", "--out", out,
        "--no-progress")
    assert json.loads((out / "config.json").read_text())["config"]["views_per_image"] == 2
    res = run("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--views-per-image",
              "2", "--epochs", "3", "--out", tmp_path / "r2", "--workers", "0", ok=False)
    assert res.exit_code == 1 and "--epochs (3) must be a multiple of --views-per-image (2)" in res.output


def test_train_teacher_validates_on_a_held_out_folder_split(tmp_path):
    """An ImageFolder without split folders: --val-fraction gives train-teacher a 'val' split to evaluate."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "imgs"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 30 * c + i, np.uint8)).save(root / f"c{c}" / f"{i}.png")
    out = tmp_path / "t"
    run("train-teacher", "--data", f"folder:{root}", "--val-fraction", "0.34", "--teacher", "cnn_tiny",
        "--size", "16", "--epochs", "1", "--batch-size", "8", "--out", out, "--workers", "0", "--no-progress")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "val/top1" in rows[0]
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["data"]["val_fraction"] == 0.34 and saved["val_split"] == "val"
    res = run("evaluate", out / "best.pt", "--data", f"folder:{root}", "--val-fraction", "0.34", "--split", "val",
              "--workers", "0", "--json")
    assert json.loads(res.output)["images"] == 6


def test_train_student_takes_the_data_the_cache_records_unless_told(tmp_path, tiny_h5, tiny_teacher):
    """Without data options a cached run trains on the cache's own data (source, split, subset, held-out val);
    data given that is not the cache's is refused in one line, as before."""
    from kdcache.data import DataConfig
    from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher

    out = str(tmp_path / "sub.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5, limit=30, subset_seed=2, val_fraction=0.2), out=out,
                            teacher=TeacherSpec(weights=tiny_teacher), views=1, view={"size": 16}, workers=0,
                            block_size=16), progress=False, log=lambda _m: None)
    runner = CliRunner()
    base = ["train-student", "--cache", out, "--student", "cnn_tiny", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--device", "cpu", "--no-progress"]
    r = runner.invoke(cli, base + ["--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "run" / "config.json").read_text())["config"]["data"]
    assert data == {"source": tiny_h5, "split": "train", "limit": 30, "subset_seed": 2, "val_fraction": 0.2}
    assert "best val top-1" in r.output  # the recorded held-out val split selects best.pt
    r = runner.invoke(cli, base + ["--out", str(tmp_path / "other"), "--data", "digits"])
    assert r.exit_code == 1 and "was made from other data" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "other").exists()


def test_storage_options_are_read_as_json_where_they_parse_and_credentials_stay_strings():
    from kdcache._utils import parse_storage_options

    got = parse_storage_options(["max_concurrency=4", "anon=true", "default_block_size=5e6",
                                 'client_kwargs={"region_name": "eu-west-1"}', "endpoint_url=http://h:9000",
                                 "secret=0123", "key=123", "token=null", "profile=default"])
    assert got == {"max_concurrency": 4, "anon": True, "default_block_size": 5e6,
                   "client_kwargs": {"region_name": "eu-west-1"}, "endpoint_url": "http://h:9000",
                   "secret": "0123", "key": "123", "token": "null", "profile": "default"}
    assert type(got["max_concurrency"]) is int
