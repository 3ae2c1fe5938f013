"""Bad data found at once, named in one line (issue 20, part 4): ``check-data`` lists every bad file of a
folder, a dump with --workers 2 refuses with the same one line as --workers 0, and a replay whose image no
longer fits its recorded crop names the file and the sample and says the data changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from kdcache.cli.main import cli
from PIL import Image

from kdcache.data import open_dataset
from kdcache.data._check import check_data

from .conftest import write_image

BAD = {  # relative path -> the problem check-data must name (headers only)
    "a/empty.jpg": "is empty (zero bytes)",
    "a/text.png": "is not an image",
    "b/half.jpg": "is truncated",
    "b/cut.png": "is truncated",
    "b/float.png": "has pixel mode 'F'",
}


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"
    assert "Traceback" not in res.output and "Caught" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def _good_folder(root, n=6, side=40):
    rng = np.random.default_rng(0)
    for c in "ab":
        for i in range(n):
            write_image(root / c / f"{i}.{'jpg' if i % 2 else 'png'}",
                        rng.integers(0, 255, (side, side, 3), dtype=np.uint8), "jpg" if i % 2 else "png")
    return root


@pytest.fixture
def bad_folder(tmp_path):
    root = _good_folder(tmp_path / "imgs")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.png").write_text("not an image\n")
    full = (root / "b" / "1.jpg").read_bytes()
    (root / "b" / "half.jpg").write_bytes(full[: len(full) // 2])
    png = (root / "a" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(png[: len(png) - 30])
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(root / "b" / "float.png", format="TIFF")
    return root


@pytest.fixture
def teacher2(tmp_path):
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    torch.manual_seed(1)
    path = tmp_path / "t2.pt"
    save_checkpoint(str(path), create_model("cnn_tiny", num_classes=2))
    return str(path)


def test_check_lists_every_bad_file(bad_folder):
    ds = open_dataset(f"folder:{bad_folder}")
    for decode in (False, True):
        r = check_data(ds, decode=decode, workers=3, progress=False)
        got = {p.file.removeprefix(str(bad_folder) + "/"): p.problem for p in r.problems}
        assert sorted(got) == sorted(BAD), got
        for rel, problem in BAD.items():
            assert problem in got[rel], (rel, got[rel])
        assert r.checked == len(ds) == 12 + len(BAD) and not r.ok


def test_check_data_cli(bad_folder, tmp_path):
    res = CliRunner().invoke(cli, ["check-data", "--data", f"folder:{bad_folder}", "--decode", "--no-progress"])
    line = _one_line(res)
    assert line.startswith(f"Error: {len(BAD)} of {12 + len(BAD)} images are unreadable or suspicious (first: ")
    for rel in BAD:
        assert str(bad_folder / rel) in res.output
    good = _good_folder(tmp_path / "good")
    res = CliRunner().invoke(cli, ["check-data", "--data", f"folder:{good}", "--no-progress"])
    assert res.exit_code == 0 and res.output.rstrip().endswith("ok"), res.output


def test_a_decoded_but_undecodable_file(tmp_path):
    """A header that reads but whose data does not decode is found by --decode only."""
    root = _good_folder(tmp_path / "imgs", n=2)
    data = bytearray((root / "a" / "1.jpg").read_bytes())
    data[200:-2] = bytes(len(data) - 202)  # scan data zeroed, end marker kept
    (root / "a" / "1.jpg").write_bytes(bytes(data))
    ds = open_dataset(f"folder:{root}")
    assert check_data(ds, progress=False).ok
    r = check_data(ds, decode=True, progress=False)
    assert [p.key for p in r.problems] == ["a/1.jpg"], r.problems


def test_dump_names_the_first_bad_file_in_one_line_with_any_worker_count(bad_folder, teacher2, tmp_path):
    lines = []
    for workers in ("0", "2"):
        out = tmp_path / "c.zarr"
        args = ["dump-teacher", "--data", f"folder:{bad_folder}", "--teacher-weights", teacher2, "--out", str(out),
                "--views", "1", "--size", "16", "--batch-size", "4", "--block-size", "64", "--workers", workers,
                "--no-progress", "--device", "cpu"]
        lines.append(_one_line(CliRunner().invoke(cli, args)))
        assert not out.exists()
    assert lines[0] == lines[1]  # the worker's error, unwrapped: the main process's own line
    assert lines[0].startswith(f"Error: cannot read image {bad_folder / 'a' / 'empty.jpg'}: "), lines[0]
    assert "replace or delete the file" in lines[0]


def test_replay_of_a_replaced_image_names_the_file_and_sample(tmp_path, teacher2):
    root = _good_folder(tmp_path / "imgs")
    cache = tmp_path / "c.zarr"
    r = CliRunner()
    res = r.invoke(cli, ["dump-teacher", "--data", f"folder:{root}", "--teacher-weights", teacher2, "--out",
                         str(cache), "--views", "1", "--size", "16", "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    write_image(root / "b" / "2.png", np.zeros((6, 6, 3), np.uint8))  # replaced after the dump by a smaller one
    for workers in ("0", "2"):
        res = r.invoke(cli, ["train-student", "--data", f"folder:{root}", "--cache", str(cache), "--student",
                             "cnn_tiny", "--out", str(tmp_path / f"run{workers}"), "--epochs", "1", "--val-split",
                             "none", "--workers", workers, "--no-progress", "--device", "cpu"])
        line = _one_line(res)
        assert "('b/2.png', " + str(root / "b" / "2.png") in line, line
        assert "does not fit the image of size 6x6" in line and "the data changed since the dump" in line, line
