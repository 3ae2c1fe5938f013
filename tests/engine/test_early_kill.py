"""An early kill is recoverable (issue 20, part 5): a train-student run killed (kill -9) before its first
checkpoint reruns with --resume (from the beginning) or plainly, and both say the same thing."""

from __future__ import annotations

import json
import os
import signal

import pytest
from click.testing import CliRunner
from engine_support import cli_run, kdcache_cmd, logs, start, wait_for
from kdcache.cli.main import cli

EARLY = "holds a run stopped before its first checkpoint"


def _epochs(out) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _leave_early_leftovers(out) -> None:
    """What a run killed in its first epoch leaves: its config, an empty metrics file, TensorBoard's folder."""
    (out / "tb").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")


@pytest.mark.parametrize("resume", [True, False])
def test_rerun_after_an_early_kill_starts_from_the_beginning(world, tmp_path, resume):
    out = tmp_path / "run"
    _leave_early_leftovers(out)
    args = world.train_args(world.reference, out, epochs=2) + (["--resume"] if resume else [])
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert f"{out} {EARLY} (metrics.jsonl, config.json, tb): starting it from the beginning" in res.output
    assert _epochs(out) == [0, 1] and (out / "last.pt").exists()


def test_resume_without_any_run_is_one_line(world, tmp_path):
    res = CliRunner().invoke(cli, world.train_args(world.reference, tmp_path / "none", epochs=1) + ["--resume"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: --resume: ") and "holds no run to resume" in res.output, res.output


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_then_resume(world, tmp_path):
    out = tmp_path / "run"
    args = [a for a in world.train_args(world.reference, out, epochs=2, steps=200)]
    for attempt in range(3):  # the kill must land inside the first epoch
        proc = start(kdcache_cmd(args + (["--overwrite"] if attempt else [])), tmp_path, f"train{attempt}")
        try:
            wait_for(lambda: (out / "config.json").exists(), proc, what="the run's config.json", interval=0.001)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if not (out / "last.pt").exists():
            break
    else:
        pytest.fail("the first epoch always finished before the kill")
    assert proc.returncode == -signal.SIGKILL, logs(proc)
    res = cli_run(args + ["--resume"])  # the resume in-process: the kill is what needs a process
    assert res.returncode == 0, res.stdout + res.stderr
    assert EARLY in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert _epochs(out) == [0, 1]
