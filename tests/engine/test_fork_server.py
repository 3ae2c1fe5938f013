"""The fork server (tests/helpers/zygote.py) the process-level tests start kdcache commands from: its children
must behave as the fresh processes they replace (exit status, a signal's death, output files, the test's
working directory and environment, sys.argv and sys.path, their own random seeds), or every test built on them
proves less."""

from __future__ import annotations

import os
import signal
import sys

from engine_support import HELPERS, _forkable, kdcache_cmd, logs, run, start, torchrun_cmd, wait_for

PROBE = """import os, random, sys
import numpy as np
print(os.getpid(), os.getcwd(), os.environ.get("PROBE"), sys.argv[1:], sys.path[0], random.random(),
      np.random.random(), sep="|")
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_commands_fork_only_where_a_fresh_interpreter_is_not_the_point(monkeypatch):
    monkeypatch.delenv("KDCACHE_TEST_NO_FORK_SERVER", raising=False)
    assert _forkable(kdcache_cmd(["info", "x"]), None) and _forkable([sys.executable, "s.py"], None)
    assert not _forkable(kdcache_cmd(["info", "x"]), {"PATH": "/bin"})  # an environment of its own
    assert not _forkable(torchrun_cmd(2, ["info", "x"]), None)
    assert not _forkable([sys.executable, "-c", "pass"], None)
    monkeypatch.setenv("KDCACHE_TEST_NO_FORK_SERVER", "1")
    assert not _forkable(kdcache_cmd(["info", "x"]), None)


def test_a_forked_command_is_a_process_of_its_own(tmp_path, monkeypatch):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PROBE", "seen")
    a, b = run([sys.executable, str(script), "3", "x y"]), run([sys.executable, str(script), "0"])
    assert (a.returncode, b.returncode, a.stderr, b.stderr) == (3, 0, "to stderr\n", "to stderr\n")
    pa, cwd, probe, argv, path0, ra, na = a.stdout.strip().split("|")
    pb, _, _, _, _, rb, nb = b.stdout.strip().split("|")
    assert int(pa) not in (os.getpid(), int(pb)) and cwd == str(work) and probe == "seen"
    assert argv == "['3', 'x y']" and path0 == str(tmp_path)
    assert ra != rb and na != nb  # seeded afresh as a new interpreter is, not copies of the server's state
    helped = start(kdcache_cmd(["info", "--help"]), tmp_path, "help")
    assert helped.wait(60) == 0 and "Usage: kdcache info" in logs(helped)
    paused = start([sys.executable, str(HELPERS / "paused_writer.py"), str(tmp_path), "info", "--help"],
                   tmp_path, "paused")
    assert paused.wait(60) == 0 and "Usage: kdcache info" in logs(paused)  # a helper script running the CLI


def test_sigkill_ends_a_forked_command_as_it_ends_a_process(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import pathlib, sys, time\npathlib.Path(sys.argv[1]).touch()\ntime.sleep(120)\n")
    proc = start([sys.executable, str(script), str(tmp_path / "up")], tmp_path, "sleeper")
    wait_for(lambda: (tmp_path / "up").exists(), proc, what="the child to start")
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(30) == -signal.SIGKILL
    try:  # reaped once waited for: no zombie keeps its pid (a lock's owner) looking alive
        os.kill(proc.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
