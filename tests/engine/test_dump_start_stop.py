"""How a dump starts and stops (issue 30): missing parent folders are made, mistakes seen from the command
are refused before anything loads, a failure before any work leaves nothing behind, a rerun with nothing
left to do says so, and SIGTERM stops a dump as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from click.testing import CliRunner
from engine_support import paused_writer_cmd
from kdcache.cli.main import cli

from kdcache.engine._lock import lock_dir


def dump(tiny_h5, tiny_teacher, out, *extra):
    args = ["dump-teacher", "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--out", str(out), "--size", "16",
            "--views", "2", "--workers", "0", "--block-size", "16", "--no-progress", *extra]
    return CliRunner().invoke(cli, args)


def test_dump_makes_missing_parent_folders(tmp_path, tiny_h5, tiny_teacher, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = dump(tiny_h5, tiny_teacher, "caches/deep/r56.zarr")  # relative, as the README's Workflow writes it
    assert res.exit_code == 0, res.output
    assert (tmp_path / "caches" / "deep" / "r56.zarr" / "zarr.json").is_file()
    assert not os.path.exists(lock_dir(str(tmp_path / "caches" / "deep" / "r56.zarr")))


def test_an_out_under_a_file_is_refused_before_loading_anything(tmp_path, tiny_h5, tiny_teacher, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")

    def no_loading(*_a, **_k):
        raise AssertionError("the teacher was loaded before the output path was checked")

    monkeypatch.setattr("kdcache.engine._dump.build_teacher", no_loading)
    res = dump(tiny_h5, tiny_teacher, tmp_path / "afile" / "sub" / "c.zarr")
    assert res.exit_code == 1, res.output
    assert res.output == f"Error: cannot create {tmp_path}/afile/sub/c.zarr: {tmp_path}/afile is not a directory\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_refused_before_loading_and_leaves_nothing(tmp_path, tiny_h5, tiny_teacher,
                                                                         monkeypatch):
    def no_loading(*_a, **_k):
        raise AssertionError("the teacher was loaded before the device was checked")

    monkeypatch.setattr("kdcache.engine._dump.build_teacher", no_loading)
    res = dump(tiny_h5, tiny_teacher, tmp_path / "new" / "c.zarr", "--device", "cuda")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: device 'cuda' requested but CUDA is not available")
    assert sorted(os.listdir(tmp_path)) == ["teacher.pt", "tiny.h5"]  # neither new/ nor the cache


def test_a_failure_before_the_first_view_removes_the_new_cache_and_its_folders(tmp_path, tiny_h5, tiny_teacher,
                                                                                monkeypatch):
    """Anything failing between the store's creation and the first computed view (here: the device, once the
    preflight check has passed) leaves no empty cache behind, nor the folders made for it."""
    from kdcache.errors import ConfigError

    def device_gone(*_a, **_k):
        raise ConfigError("the device went away")

    monkeypatch.setattr("kdcache.engine._compute.select_device", device_gone)
    out = tmp_path / "new" / "c.zarr"
    res = dump(tiny_h5, tiny_teacher, out)
    assert res.exit_code == 1, res.output
    assert res.output.endswith(f"\nError: the device went away; nothing was computed, so {out} was removed\n")
    assert not (tmp_path / "new").exists()


def test_a_rerun_of_a_finished_dump_says_there_was_nothing_to_do(tmp_path, tiny_h5, tiny_teacher):
    out = tmp_path / "c.zarr"
    first = dump(tiny_h5, tiny_teacher, out)
    assert first.exit_code == 0 and "views/s" in first.output
    again = dump(tiny_h5, tiny_teacher, out)
    assert again.exit_code == 0, again.output
    assert "computed now: 0" in again.output and "views/s" not in again.output
    assert again.output.rstrip().endswith("nothing to do: every view this command covers was already cached "
                                          "(--add-views N computes more)")


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["kill-pid", "kill-group-with-workers"])
def test_sigterm_stops_a_dump_as_ctrl_c_does(world, tmp_path, to_group):
    """SIGTERM to the dump (``kill PID``), or to its whole process group as batch schedulers send it (its
    DataLoader workers die of it too): the dump stops with the resume message, its lock released, its finished
    units kept."""
    out = tmp_path / "c.zarr"
    markers = tmp_path / "markers"
    markers.mkdir()
    args = world.dump_args(out, extra=["--workers", "2"] if to_group else [])
    with open(tmp_path / "dump.log", "w") as log:
        proc = subprocess.Popen(paused_writer_cmd(markers, args), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (markers / "wrote-one").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dump.log").read_text()
            time.sleep(0.005)
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        (markers / "go").touch()  # let the held writer thread finish its unit, as it would unpaused
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = (tmp_path / "dump.log").read_text()
    assert proc.returncode == 1, text
    assert text.splitlines()[-1] == "Error: interrupted; rerun the same command to resume", text
    assert "Traceback" not in text
    assert not os.path.exists(lock_dir(str(out)))
    from kdcache.cache import CacheStore

    done = CacheStore.open(str(out)).done_units()
    assert 1 <= done.sum() < done.size


def test_info_of_a_cache_with_no_view_done_gives_no_bytes_per_view(tmp_path, tiny_h5, tiny_teacher, monkeypatch):
    """A dump interrupted before its first view keeps its (resumable) cache; info must not divide its
    metadata's size by one view."""
    import json

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("kdcache.engine._compute._run_blocks", interrupted)
    out = tmp_path / "c.zarr"
    res = dump(tiny_h5, tiny_teacher, out)
    assert res.exit_code == 1 and res.output.endswith("Error: interrupted; rerun the same command to resume\n")
    info = CliRunner().invoke(cli, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "coverage     0.0% done" in info.output and " B per view" not in info.output
    assert "(no view done yet)" in info.output
    assert json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)["bytes_per_view"] is None


def test_parent_folders_another_shard_makes_meanwhile_are_no_error_and_not_removed(tmp_path, monkeypatch):
    from kdcache.engine._preflight import make_parents, remove_empty

    real_mkdir = os.mkdir

    def raced(path, *args):  # another --shard job makes the folder between our check and our mkdir
        real_mkdir(path, *args)
        raise FileExistsError(17, "File exists", path)

    monkeypatch.setattr(os, "mkdir", raced)
    assert make_parents(str(tmp_path / "a" / "b" / "c.zarr")) == []
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    remove_empty([])
    assert (tmp_path / "a" / "b").is_dir()
