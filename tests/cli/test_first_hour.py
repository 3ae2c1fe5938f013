"""A new user's first hour (issue 30): options the data decides, defaults taken from what a cache records,
unknown names, and messages that say what to do."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(res, code: int = 1) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    return res.output.strip()


def dump_cmd(data, teacher, out, *extra):
    return ["dump-teacher", "--data", data, "--teacher-weights", teacher, "--out", out, "--size", "16", "--views", "1",
            "--workers", "0", "--block-size", "16", "--no-progress", *extra]


@pytest.fixture
def cache(tmp_path, tiny_h5, tiny_teacher) -> str:
    out = str(tmp_path / "c.zarr")
    res = invoke(*dump_cmd(tiny_h5, tiny_teacher, out))
    assert res.exit_code == 0, res.output
    return out


TRAIN = ["--epochs", "1", "--batch-size", "16", "--workers", "0", "--no-progress", "--val-split", "none"]


def test_num_classes_as_a_constructor_argument_is_one_line(tmp_path, tiny_h5, tiny_teacher, cache):
    res = invoke("train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny", "--student-arg",
                 "num_classes=5", "--out", tmp_path / "run", *TRAIN)
    assert one_line_error(res) == ("Error: --student-arg num_classes=5: the number of classes comes from the data "
                                   "(its class count), not from a constructor argument; drop it")
    assert not (tmp_path / "run").exists()
    res = invoke("train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--teacher-arg", "num_classes=5",
                 "--out", tmp_path / "t", *TRAIN)
    assert one_line_error(res).startswith("Error: --teacher-arg num_classes=5: the number of classes comes from")
    res = invoke("dump-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--random-init", "--teacher-arg",
                 "num_classes=3", "--out", tmp_path / "d.zarr", "--workers", "0", "--no-progress")
    assert one_line_error(res).startswith("Error: --teacher-arg num_classes=3: the number of classes comes from")
    assert not (tmp_path / "d.zarr").exists()


def test_a_cache_of_a_subset_says_which_flags_train_on_it(tmp_path, tiny_h5, tiny_teacher):
    out = str(tmp_path / "sub.zarr")
    assert invoke(*dump_cmd(tiny_h5, tiny_teacher, out, "--limit", "30")).exit_code == 0
    info = invoke("info", out)
    assert "48 samples" not in info.output.split("dataset")[1].split("\n")[0]  # (the tmp path may hold "48")
    assert ("30 samples (a 30-image subset, seed 0: train with --limit 30 --subset-seed 0), 3 classes"
            in info.output), info.output
    # another subset given: refused, naming the flags of the cache's own subset
    res = invoke("train-student", "--cache", out, "--data", tiny_h5, "--limit", "20", "--student", "cnn_tiny",
                 "--out", tmp_path / "run", *TRAIN)
    line = one_line_error(res)
    assert line.startswith(f"Error: {out} was made from other data: manifest_sha256: ")
    assert line.endswith("; the cache was made from a 30-image subset (seed 0) of its split and this data has 20 "
                         "images: give --limit 30 and --subset-seed 0"), line
    ok = invoke("train-student", "--cache", out, "--data", tiny_h5, "--limit", "30", "--subset-seed", "0",
                "--student", "cnn_tiny", "--out", tmp_path / "run", *TRAIN)
    assert ok.exit_code == 0, ok.output
    # --data alone: the subset the cache records applies (a data option given replaces only its own part)
    ok = invoke("train-student", "--cache", out, "--data", tiny_h5, "--student", "cnn_tiny", "--out",
                tmp_path / "run2", *TRAIN)
    assert ok.exit_code == 0, ok.output


def test_a_cache_of_all_images_says_to_drop_limit(tmp_path, tiny_h5, cache):
    import json

    assert json.loads(invoke("info", cache, "--json").output)["subset"] is None
    res = invoke("train-student", "--cache", cache, "--data", tiny_h5, "--limit", "30", "--student", "cnn_tiny",
                 "--out", tmp_path / "run", *TRAIN)
    assert one_line_error(res).endswith("; the cache was made from all 48 images of its split and this data has "
                                        "30: drop --limit")


def test_verify_takes_the_teacher_the_cache_records(tmp_path, tiny_h5, tiny_teacher, cache, monkeypatch):
    res = invoke("verify", cache, "--samples", "8", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "teacher    cnn_tiny" in res.output and res.output.rstrip().endswith("ok")
    other = tmp_path / "other.pt"  # another teacher given explicitly overrides the record
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    save_checkpoint(str(other), create_model("cnn_tiny", num_classes=3))
    res = invoke("verify", cache, "--teacher-weights", other, "--device", "cpu")
    assert one_line_error(res).startswith(f"Error: {cache} was made by another teacher: weights_sha256")
    monkeypatch.chdir(tmp_path)  # a dump given a relative weights path, whose file then moves
    gone, moved = tmp_path / "gone.zarr", tmp_path / "moved.pt"
    assert invoke(*dump_cmd(tiny_h5, "teacher.pt", gone)).exit_code == 0
    (tmp_path / "teacher.pt").rename(moved)
    res = invoke("verify", gone, "--device", "cpu")
    assert one_line_error(res) == (f"Error: {gone} was made with the teacher weights teacher.pt, which do not exist "
                                   "here; pass --teacher-weights")
    assert invoke("verify", gone, "--teacher-weights", moved, "--device", "cpu").exit_code == 0


def test_every_command_takes_a_config_file():
    from kdcache.cli.main import cli as group

    lacking = [name for name, cmd in group.commands.items() if "config" not in {p.name for p in cmd.params}]
    assert lacking == []


def test_plot_takes_a_config_file(tmp_path):
    cfg = tmp_path / "plot.toml"
    cfg.write_text('out = "x.png"\nmetric = "val/loss"\n')
    res = invoke("plot", "--config", cfg, tmp_path / "no-run")
    assert one_line_error(res).endswith("does not exist: not a training run directory")
    cfg.write_text("nonsense = 1\n")
    res = invoke("plot", "--config", cfg, tmp_path / "no-run")
    assert res.exit_code == 2 and "unknown option 'nonsense' for 'plot'" in res.output


def test_ema_select_help_names_no_command_that_does_not_use_it():
    for cmd in ("train-student", "train-teacher"):
        text = " ".join(invoke(cmd, "--help").output.split())
        ema = text.split("--ema-select")[1].split("--precision")[0]
        assert "export" not in ema and "evaluate" in ema


def test_models_with_an_unknown_tag_is_one_line_naming_the_known_tags():
    res = invoke("models", "--tag", "studnet")
    assert one_line_error(res) == "Error: unknown tag 'studnet'; known tags: student, teacher, test"
    assert "cnn_tiny" in invoke("models", "--tag", "student").output


def test_train_teacher_prints_its_view_input_and_warns_of_upscaled_views(tmp_path, tiny_h5):
    res = invoke("train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--out", tmp_path / "a",
                 "--max-steps-per-epoch", "1", *TRAIN)
    assert res.exit_code == 0, res.output
    assert ("view input: size 32, mean 0.5 0.5 0.5, std 0.5 0.5 0.5, interpolation bilinear, crop_pct 1.0 (from the "
            "cnn_tiny architecture's default)\nview ops: ") in res.output
    assert "warning" not in res.output  # 2x the images' side: below the warning's threshold
    res = invoke("train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "64", "--out", tmp_path / "b",
                 "--max-steps-per-epoch", "1", *TRAIN)
    assert res.exit_code == 0, res.output
    assert "view input: size 64 (set explicitly); mean 0.5 0.5 0.5," in res.output
    assert ("warning: 64-px views of 16-px images (size set explicitly): each view costs about 16x the compute of a "
            "16-px one, for no new detail; unless the model needs that input (pretrained weights), --size 16 trains "
            "at the images' own size") in res.output


def test_the_upscale_warning_names_where_the_size_came_from():
    from kdcache._views import resolve_view_spec
    from kdcache.models import ModelCfg

    class Cifar:  # 32-px images, as CIFAR's
        def max_side(self):
            return 32

    said = []
    spec = resolve_view_spec(ModelCfg(name="resnet18", input_size=224), {}, log=said.append, images=Cifar())
    assert spec.size == 224
    assert ("warning: 224-px views of 32-px images (size from the resnet18 architecture's default): each view costs "
            "about 49x the compute of a 32-px one") in said[0]


def test_an_hf_teachers_view_input_is_said_to_come_from_its_preprocessor_config(tmp_path, tiny_hf_vit):
    vit = tiny_hf_vit(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    res = invoke("dump-teacher", "--data", "digits", "--limit", "16", "--teacher", f"hf:{vit}", "--views", "1",
                 "--workers", "0", "--no-progress", "--out", tmp_path / "c.zarr")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("view input:"))
    assert line == (f"view input: size 32, mean 0.4 0.5 0.6, std 0.2 0.25 0.3, interpolation bilinear (from hf:{vit}'s "
                    f"preprocessor_config.json); crop_pct 1.0 (from the hf:{vit} architecture's default)")


def test_an_explicit_size_the_checkpoint_records_too_is_not_a_contradiction(tmp_path, tiny_h5):
    """The quickstart's case: a teacher trained at --size 16, dumped with --size 16 again."""
    res = invoke("train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16", "--out", tmp_path / "t",
                 "--max-steps-per-epoch", "1", *TRAIN)
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "t" / "best.pt"
    for size, said in (("16", f"size 16 (set explicitly, as in the views {ckpt} was trained on)"),
                       ("24", "size 24 (set explicitly)")):
        res = invoke("dump-teacher", "--data", tiny_h5, "--teacher-weights", ckpt, "--out", tmp_path / f"c{size}.zarr",
                     "--size", size, "--views", "1", "--workers", "0", "--no-progress")
        assert res.exit_code == 0, res.output
        line = next(ln for ln in res.output.splitlines() if ln.startswith("view input:"))
        assert line.startswith(f"view input: {said}; mean 0.5 0.5 0.5, std 0.5 0.5 0.5, interpolation bilinear, "
                               f"crop_pct 1.0 (from the views {ckpt} was trained on)"), line


def test_an_interrupted_training_run_says_to_resume_with_the_flag(tmp_path, tiny_h5, monkeypatch):
    """Ctrl-C / SIGTERM of train-teacher (or train-student): continuing needs --resume, not the same command."""
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    from kdcache.train import _run

    real_end = _run.Run.end_epoch

    def end_then_interrupt(self, *a, **k):
        real_end(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(_run.Run, "end_epoch", end_then_interrupt)
    res = CliRunner().invoke(cli, ["train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16",
                                   "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "t")])
    assert res.exit_code == 1 and res.output.rstrip().endswith(
        "interrupted; rerun the same command with --resume to continue from the last checkpoint"), res.output
    assert (tmp_path / "t" / "last.pt").is_file()
