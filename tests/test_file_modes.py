"""Files kdcache writes through a temporary name (export's HDF5 file, checkpoints) get the mode the umask
gives any new file, so teammates on a shared filesystem can read them (issue 30, item 14)."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_export_and_checkpoints_respect_the_umask(tmp_path, umask, make_cache, tiny_h5):
    want = 0o666 & ~umask  # 0o644 under umask 022, 0o664 under 002
    cache = make_cache(1, 16)
    h5 = tmp_path / "c.h5"
    res = CliRunner().invoke(cli, ["export", cache, str(h5), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert oct(mode(h5)) == oct(want)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train-student", "--cache", cache, "--data", tiny_h5, "--student", "cnn_tiny",
                                   "--epochs", "1", "--batch-size", "16", "--workers", "0", "--no-progress",
                                   "--val-split", "none", "--out", str(run)])
    assert res.exit_code == 0, res.output
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.json"):
        assert oct(mode(run / name)) == oct(want), name
