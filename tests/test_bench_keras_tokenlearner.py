"""Smoke test of bench/keras_tokenlearner.py at toy size: a scratch row runs the protocol's loop (held-out
validation, constant lr, decay of every parameter, the Keras view), writes its JSON, and a rerun skips it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def test_keras_tokenlearner_bench_at_toy_size(run_bench, tmp_path, tiny_h5, tiny_teacher):
    cmd = [sys.executable, str(REPO / "bench" / "keras_tokenlearner.py"), "--data", tiny_h5, "--students",
           "keras_tokenlearner_vit_test", "--seeds", "0", "--epochs", "1", "--batch-size", "16", "--size", "16",
           "--crop-resize", "20", "--workers", "0", "--workdir", str(tmp_path / "w"), "--results",
           str(tmp_path / "r"), "--state", str(tmp_path / "s"), "--rows", "scratch", "cached-soft", "cached-hard", "online-soft", "scratch-jpeg2",
           "--teacher", "cnn_tiny", "--teacher-weights", tiny_teacher, "--views", "2"]
    first = run_bench(cmd, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    res = json.loads((tmp_path / "r" / "keras_tokenlearner_vit_test__scratch__s0.json").read_text())
    assert res["epochs"] == 1 and res["test"]["images"] == 24 and res["test"]["split"] == "test"
    assert res["test"]["selected_by"] == "val top-1 on 'val'" and len(res["val_top1_by_epoch"]) == 1
    assert res["command"].startswith("bench/keras_tokenlearner.py") and res["commit"]
    assert len(res["train_task_loss_by_epoch"]) == len(res["val_loss_by_epoch"]) == 1
    assert res["train_task_loss_by_epoch"][0] > 0 and res["teacher_agreement_by_epoch"] == [None]
    cfg = json.loads((tmp_path / "w" / "keras_tokenlearner_vit_test__scratch__s0" / "config.json").read_text())
    c = cfg["config"]
    assert (c["sched"], c["decay_rule"], c["weight_decay"], c["warmup_epochs"]) == ("constant", "all", 0.1, 0.0)
    assert c["data"]["val_fraction"] == 0.2 and c["val_split"] == "val"
    assert (cfg["view_spec"]["crop"], cfg["view_spec"]["crop_resize"], cfg["view_spec"]["padding"]) == ("pad", 20, 0)
    # the cached and online rows: the teacher's views (its normalisation), undone inside the student
    dump = json.loads((tmp_path / "r" / "dump_cnn_tiny_V2.json").read_text())
    assert dump["complete"] and dump["teacher_forwards"] == 2 * 39  # 48 training images, 9 held out as val
    for row in ("cached-soft-V2", "cached-hard-V2", "online-soft"):
        res = json.loads((tmp_path / "r" / f"keras_tokenlearner_vit_test__{row}__s0.json").read_text())
        cfg = json.loads((tmp_path / "w" / f"keras_tokenlearner_vit_test__{row}__s0" / "config.json").read_text())
        assert res["epochs"] == 1 and cfg["view_spec"]["mean"] == [0.5, 0.5, 0.5]  # cnn_tiny's
        assert cfg["config"]["model_kwargs"]["input_mean"] == [0.5, 0.5, 0.5]
        assert cfg["config"]["loss"]["distill"] == ("hard" if "hard" in row else "soft")
        assert cfg["view_spec"]["crop_resize"] == 20 and cfg["config"]["sched"] == "constant"
        assert 0 <= res["teacher_agreement_by_epoch"][0] <= 1
    # the second JPEG generation: every image re-encoded (changed, but close), the row trained on it
    jpeg = json.loads((tmp_path / "r" / "jpeg2_q75.json").read_text())
    assert set(jpeg["splits"]) == {"train", "test"} and jpeg["splits"]["train"]["images"] == 48
    assert jpeg["grid_shift_px"] == 4 and jpeg["quality"] == 75
    assert all(0 < s["pixels_changed"] and 15 < s["psnr_db"] < 60 for s in jpeg["splits"].values()), jpeg
    run_dir = tmp_path / "w" / "keras_tokenlearner_vit_test__scratch-jpeg2-q75__s0"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"]["data"]["source"] == f"hdf5:{tmp_path / 'w'}/tiny_jpeg2_q75_shift4.h5"
    assert cfg["config"]["loss"]["distill"] == "none"
    with h5py.File(tiny_h5.split(":", 1)[1]) as a, h5py.File(tmp_path / "w" / "tiny_jpeg2_q75_shift4.h5") as b:
        assert np.array_equal(a["train/labels"][()], b["train/labels"][()])
        assert a["train/images"].shape == b["train/images"].shape
        assert not np.array_equal(a["train/images"][()], b["train/images"][()])
    again = run_bench(cmd, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("done (") == 5, again.stdout
    # the dump timed whole, into a scratch store removed after; the table with its cost columns
    timed = run_bench(cmd + ["--time-dump"], cwd=REPO)
    assert timed.returncode == 0, timed.stderr[-3000:]
    timing = json.loads((tmp_path / "r" / "dump_timing_cnn_tiny_V2.json").read_text())
    assert timing["teacher_forwards"] == 2 * 39 and timing["seconds"] > timing["compute_seconds"] > 0
    assert not (tmp_path / "w" / "timing_cnn_tiny_V2.zarr").exists() and timing["commit"]
    shown = run_bench(cmd + ["--table"], cwd=REPO)
    assert shown.returncode == 0, shown.stderr[-3000:]
    rows = {t["targets"]: t for t in json.loads((tmp_path / "r" / "table.json").read_text())}
    assert list(rows) == ["scratch", "cached-soft-V2", "cached-hard-V2", "online-soft", "scratch-jpeg2-q75"]
    scratch, cached, online = rows["scratch"], rows["cached-soft-V2"], rows["online-soft"]
    assert scratch["gain_over_scratch"] is None and scratch["cost_5_seconds"] == 5 * scratch["run_seconds"]
    assert cached["gain_over_scratch"] == cached["top1_mean"] - scratch["top1_mean"]
    assert cached["teacher_forwards_once"] == 78 and cached["teacher_forwards_per_run"] == 0
    assert cached["cost_20_seconds"] == timing["seconds"] + 20 * cached["run_seconds"]
    assert online["teacher_forwards_once"] == 0 and online["teacher_forwards_per_run"] == 1 * 39
    assert "cached-soft-V2" in shown.stdout and "78" in shown.stdout


def test_an_unfinished_row_continues_on_a_new_machine_from_its_saved_state(run_bench, tmp_path, tiny_h5):
    """--save-state copies an unfinished row's resume files into the checkout's --state; with its --workdir gone
    (a new machine) the row starts from that state and ends exactly as a run never interrupted; once finished,
    --save-state removes its state."""
    def cmd(name: str, epochs: int) -> list[str]:
        return [sys.executable, str(REPO / "bench" / "keras_tokenlearner.py"), "--data", tiny_h5, "--students",
                "keras_tokenlearner_vit_test", "--seeds", "0", "--epochs", str(epochs), "--batch-size", "16",
                "--size", "16", "--crop-resize", "20", "--workers", "0", "--workdir", str(tmp_path / f"w{name}"),
                "--results", str(tmp_path / f"r{name}"), "--state", str(tmp_path / f"s{name}")]

    row = "keras_tokenlearner_vit_test__scratch__s0"
    whole = run_bench(cmd("a", 2), cwd=REPO)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = run_bench(cmd("b", 1), cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "rb" / f"{row}.json").unlink()  # one epoch of two done: unfinished
    saved = run_bench(cmd("b", 2) + ["--save-state"], cwd=REPO)
    assert saved.returncode == 0 and f"{row}: saved 1 epochs" in saved.stdout, saved.stdout + saved.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "sb" / row).iterdir()) == sorted(
        ["best.pt", "config.json", "last.pt", "metrics.jsonl"])
    best = torch.load(tmp_path / "sb" / row / "best.pt", weights_only=True)  # model only: tested at the end
    assert "optimizer" not in best and "optimizer" in torch.load(tmp_path / "sb" / row / "last.pt", weights_only=True)
    again = run_bench(cmd("b", 2) + ["--save-state"], cwd=REPO)
    assert f"{row}: state already holds 1 epochs" in again.stdout, again.stdout
    shutil.rmtree(tmp_path / "wb")  # a new machine
    resumed = run_bench(cmd("b", 2), cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "starting from the state saved in" in resumed.stdout and "resumed from" in resumed.stdout
    a, b = (json.loads((tmp_path / f"r{n}" / f"{row}.json").read_text()) for n in "ab")
    assert b["epochs"] == 2 and b["val_top1_by_epoch"] == a["val_top1_by_epoch"] and b["test"] == a["test"]
    assert b["train_task_loss_by_epoch"] == a["train_task_loss_by_epoch"]
    done = run_bench(cmd("b", 2) + ["--save-state"], cwd=REPO)
    assert f"{row}: finished, its state removed" in done.stdout and not (tmp_path / "sb" / row).exists()


def test_a_state_copy_that_overlaps_a_checkpoint_write_is_taken_again(run_bench, tmp_path, tiny_h5, monkeypatch):
    """The run replaces last.pt while its state is copied: the copy is thrown away and taken again."""
    cmd = [sys.executable, str(REPO / "bench" / "keras_tokenlearner.py"), "--data", tiny_h5, "--students",
           "keras_tokenlearner_vit_test", "--seeds", "0", "--epochs", "1", "--batch-size", "16", "--size", "16",
           "--crop-resize", "20", "--workers", "0", "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert run_bench(cmd, cwd=REPO).returncode == 0
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import keras_tokenlearner as bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    src = tmp_path / "w" / "keras_tokenlearner_vit_test__scratch__s0"
    copies, real_copy = [], shutil.copy2

    def copy_while_the_run_writes(a, b):
        copies.append(Path(a).name)
        real_copy(a, b)
        if len(copies) == 2:  # the run replaces last.pt (same content: a new file by rename, as save_checkpoint)
            real_copy(src / "last.pt", src / "last.pt.tmp")
            (src / "last.pt.tmp").replace(src / "last.pt")

    monkeypatch.setattr(bench.shutil, "copy2", copy_while_the_run_writes)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    assert bench._copy_run_state(str(src), str(tmp_path / "copy")) == 1
    assert len(copies) == 2 * len(bench.STATE_FILES)  # taken twice


def test_rows_with_another_loss_are_other_rows():
    """A distilled row run with another alpha or temperature gets its own id (its own JSON and run directory),
    so it can never be skipped as, or overwrite, the protocol's row; scratch rows have no loss to vary."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from keras_tokenlearner import _args, rows
    finally:
        sys.path.remove(str(REPO / "bench"))
    kinds = ["--rows", "scratch", "cached-soft", "online-soft", "--seeds", "0"]
    assert rows(_args(kinds)) == ["keras_tokenlearner_vit/scratch/s0", "keras_tokenlearner_vit/cached-soft-V8/s0",
                                  "keras_tokenlearner_vit/online-soft/s0"]
    assert rows(_args(kinds + ["--temperature", "1"]))[1:] == [
        "keras_tokenlearner_vit/cached-soft-V8-T1/s0", "keras_tokenlearner_vit/online-soft-T1/s0"]
    assert rows(_args(kinds + ["--alpha", "0.9", "--temperature", "2"]))[0] == "keras_tokenlearner_vit/scratch/s0"
    assert rows(_args(kinds + ["--alpha", "0.9", "--temperature", "2"]))[1].endswith("cached-soft-V8-a0.9-T2/s0")
