"""Bad inputs a user trips on: every one must end in one 'Error: ...' line naming what and where,
with a non-zero exit and never a traceback (issue 9, part 4). The table in the report of that work
is this file's parameter list."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


@pytest.fixture
def world(tmp_path, tiny_h5, tiny_teacher):
    """Data, teacher, a finished cache, a finished run and a few broken files, in tmp_path."""
    r = CliRunner()
    cache = tmp_path / "c.zarr"
    res = r.invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--out", str(cache),
                         "--views", "1", "--size", "16", "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = r.invoke(cli, ["train-student", "--data", tiny_h5, "--cache", str(cache), "--student", "cnn_tiny",
                         "--out", str(run), "--epochs", "1", "--val-split", "none", "--workers", "0",
                         "--no-progress"])
    assert res.exit_code == 0, res.output
    stray = tmp_path / "stray.h5"
    with h5py.File(stray, "w") as f:
        labels = np.arange(20) % 10
        labels[13] = 999
        f["train/images"] = np.zeros((20, 8, 8, 3), np.uint8)
        f["train/labels"] = labels
    named = tmp_path / "named.h5"
    with h5py.File(named, "w") as f:
        f.attrs["class_names"] = ["a", "b"]
        f["train/images"] = np.zeros((3, 8, 8, 3), np.uint8)
        f["train/labels"] = np.array([0, 1, 5])
        f["train/filenames"] = np.array([b"x.png", b"y.png", b"z.png"])
    (tmp_path / "text.txt").write_text("hello\n")
    imgs = tmp_path / "imgs"
    for split in ("train", "val"):
        (imgs / split / "a").mkdir(parents=True)
    return {"data": tiny_h5, "teacher": tiny_teacher, "cache": str(cache), "run": str(run), "tmp": str(tmp_path),
            "stray": f"hdf5:{stray}", "named": f"hdf5:{named}", "text": str(tmp_path / "text.txt"),
            "imgs": f"folder:{imgs}"}


DUMP = ["dump-teacher", "--workers", "0", "--no-progress", "--size", "16"]
TRAIN = ["--epochs", "1", "--workers", "0", "--no-progress", "--val-split", "none"]

# (what the user did, arguments, text the one-line message must hold)
BAD_INPUTS = [
    ("dump a teacher without weights",
     DUMP + ["--data", "{data}", "--teacher", "cnn_tiny", "--out", "{tmp}/x.zarr"],
     "teacher 'cnn_tiny' has no weights: give --teacher-weights"),
    ("an online teacher without weights",
     ["train-student", "--data", "{data}", "--online-teacher", "cnn_tiny", "--student", "cnn_tiny",
      "--out", "{tmp}/r3"] + TRAIN,
     "teacher 'cnn_tiny' has no weights: give --teacher-weights"),
    ("--random-init together with weights",
     DUMP + ["--data", "{data}", "--teacher-weights", "{teacher}", "--random-init", "--out", "{tmp}/x.zarr"],
     "--random-init and --teacher-weights exclude each other"),
    ("--init-seed without --random-init",
     DUMP + ["--data", "{data}", "--teacher", "cnn_tiny", "--init-seed", "3", "--out", "{tmp}/x.zarr"],
     "--init-seed only applies with --random-init"),
    ("dump into /proc",
     DUMP + ["--data", "{data}", "--teacher-weights", "{teacher}", "--out", "/proc/x.zarr"],
     "cannot create /proc/x.zarr"),
    ("train-student into /proc",
     ["train-student", "--data", "{data}", "--cache", "{cache}", "--student", "cnn_tiny", "--out", "/proc/x"] + TRAIN,
     "cannot create run directory /proc/x"),
    ("train-teacher into /proc",
     ["train-teacher", "--data", "{data}", "--teacher", "cnn_tiny", "--out", "/proc/x"] + TRAIN,
     "cannot create run directory /proc/x"),
    ("export into /proc", ["export", "{cache}", "/proc/x.h5"], "cannot write /proc/x.h5"),
    ("quickstart into /proc", ["quickstart", "--out", "/proc/q"], "cannot create /proc/q"),
    ("train-student into an existing run",
     ["train-student", "--data", "{data}", "--cache", "{cache}", "--student", "cnn_tiny", "--out", "{run}"] + TRAIN,
     "already holds a run (last.pt, best.pt, metrics.jsonl, config.json, test.json); continue it with --resume, "
     "replace it "
     "with --overwrite"),
    ("--resume with --overwrite",
     ["train-student", "--data", "{data}", "--cache", "{cache}", "--student", "cnn_tiny", "--out", "{run}",
      "--resume", "--overwrite"] + TRAIN,
     "--resume and --overwrite exclude each other"),
    ("one label 999 in a 10-class HDF5 without class names",
     DUMP + ["--data", "{stray}", "--teacher", "cnn_tiny", "--random-init", "--out", "{tmp}/x.zarr"],
     "labels imply 1000 classes (sample 13 ('train/13') has label 999) but 989 of them have no sample"),
    ("a label outside class_names",
     DUMP + ["--data", "{named}", "--teacher", "cnn_tiny", "--random-init", "--out", "{tmp}/x.zarr"],
     "sample 2 ('z.png') has label 5, outside the 2 classes"),
    ("a text file as data", DUMP + ["--data", "hdf5:{text}", "--teacher-weights", "{teacher}", "--out", "{tmp}/x.zarr"],
     "is not a readable HDF5 file"),
    ("a text file as a cache", ["info", "{text}"], "cache not found"),
    ("a storage option without =", ["info", "{cache}", "--storage-option", "anon"],
     "Invalid value for '--storage-option': expected KEY=VALUE, got 'anon'"),
    ("a text file as train-student's cache",
     ["train-student", "--data", "{data}", "--cache", "{text}", "--student", "cnn_tiny", "--out", "{tmp}/r2"] + TRAIN,
     "cache not found"),
    ("--val-fraction on a folder with split folders",
     DUMP + ["--data", "{imgs}", "--val-fraction", "0.2", "--teacher-weights", "{teacher}", "--out", "{tmp}/x.zarr"],
     "has split folders (train, val); --val-fraction only divides a folder without them"),
    ("verify with another split than the cache's", ["verify", "{cache}", "--teacher-weights", "{teacher}", "--split",
                                                    "test", "--device", "cpu"],
     "was made from other data"),
]


@pytest.mark.parametrize("what,args,needle", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line(world, what, args, needle):
    args = [a.format(**world) for a in args]
    before = sorted(os.listdir(world["tmp"]))
    line = _one_line(CliRunner().invoke(cli, args))
    assert needle in line, line
    assert sorted(os.listdir(world["tmp"])) == before  # nothing new left behind


def _limited(max_bytes: int):
    def pre():  # the child's files may not grow past max_bytes: writes fail like on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return pre


@pytest.mark.parametrize("cmd,needle", [
    (["train-teacher", "--data", "{data}", "--teacher", "cnn_small", "--out", "{tmp}/full_run", "--size", "16"] + TRAIN,
     "cannot write {tmp}/full_run/"),
    (DUMP + ["--data", "{data}", "--teacher-weights", "{teacher}", "--out", "{tmp}/full.zarr"], "{tmp}/full.zarr"),
])
def test_a_full_disk_is_one_line(world, cmd, needle):
    """A real failing write (RLIMIT_FSIZE: 'File too large', as a full disk fails with ENOSPC), in a subprocess."""
    args = [a.format(**world) for a in cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "kdcache", *args], capture_output=True, text=True, env=env,
                       preexec_fn=_limited(4096), timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and needle.format(**world) in errors[0], out
    assert "File too large" in errors[0] or "could not be written in full" in errors[0], out
