"""Progress bars (issue 30, item 15): on in a terminal, off in a redirected stderr (no ``\\r`` frames in a
log), forced either way by --progress/--no-progress; Hugging Face's weight-loading bar follows them."""

from __future__ import annotations

from click.testing import CliRunner
from kdcache.cli.main import cli

TRAIN = ["--epochs", "2", "--batch-size", "16", "--workers", "0", "--val-split", "test"]


def train(tiny_h5, out, *extra):
    return CliRunner().invoke(cli, ["train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16",
                                    "--out", str(out), *TRAIN, *extra])


def test_no_bars_when_stderr_is_not_a_terminal(tmp_path, tiny_h5):
    res = train(tiny_h5, tmp_path / "quiet")  # CliRunner's stderr is no terminal, as a batch job's log file
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output and "it/s" not in res.output and "batch/s" not in res.output
    epochs = [ln for ln in res.output.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2  # one line per epoch is what remains
    res = train(tiny_h5, tmp_path / "forced", "--progress")
    assert res.exit_code == 0 and "\r" in res.output  # asked for: drawn all the same


def test_bars_by_default_in_a_terminal(tmp_path, tiny_h5, monkeypatch):
    monkeypatch.setattr("kdcache.cli.options.stderr_is_terminal", lambda: True)
    res = train(tiny_h5, tmp_path / "tty")
    assert res.exit_code == 0 and "\r" in res.output
    res = train(tiny_h5, tmp_path / "off", "--no-progress")
    assert res.exit_code == 0 and "\r" not in res.output


def test_export_and_check_data_follow_the_same_rule(tmp_path, make_cache, tiny_h5):
    cache = make_cache(1, 16)
    res = CliRunner().invoke(cli, ["export", cache, str(tmp_path / "c.h5")])
    assert res.exit_code == 0 and "\r" not in res.output, res.output
    res = CliRunner().invoke(cli, ["check-data", "--data", tiny_h5])
    assert res.exit_code == 0 and "\r" not in res.output, res.output


def test_hugging_face_loading_bar_obeys_no_progress(tmp_path, monkeypatch, tiny_hf_vit):
    from transformers.utils import logging as tf_logging

    vit = tiny_hf_vit()
    monkeypatch.setattr("kdcache.cli.options.stderr_is_terminal", lambda: True)  # even in a terminal
    args = ["dump-teacher", "--data", "digits", "--limit", "16", "--teacher", f"hf:{vit}", "--views", "1",
            "--workers", "0"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a.zarr"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Loading weights" not in res.output and "\r" not in res.output
    assert tf_logging.is_progress_bar_enabled()  # switched back on after the command
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b.zarr")])
    assert res.exit_code == 0 and "Loading weights" in res.output
