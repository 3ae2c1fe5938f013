"""A fork server for the process-level tests: one process per test worker imports torch, torchvision and the
kdcache CLI once, then forks a child for each command a test starts, so the kdcache processes the tests race,
kill and resume begin with their ~3 CPU-s of imports already done (at least 43 such processes a suite run,
besides those killed).

A child is a real process: its own pid, files, signals and exit status (a SIGKILL is a SIGKILL); it runs what
``python -m kdcache ARGS`` or ``python SCRIPT ARGS`` would run (``runpy``, ``sys.argv`` as there, stdin from
/dev/null, stdout and stderr to the files given, interpreter exit with its atexit handlers). What it does not
have is a fresh interpreter: commands with an environment of their own, torchrun (its ranks are fresh
interpreters anyway) and the audit sitecustomize keep ``subprocess`` (:func:`engine_support.start` decides).
``KDCACHE_TEST_NO_FORK_SERVER=1`` sends every command through ``subprocess`` again.

The server is this file run as a script; a test talks to it through :class:`ForkServer` (JSON lines on its
stdin/stdout): ``spawn`` answers the child's pid, ``poll`` its exit status once the server has reaped it. The
server ends when its stdin closes, i.e. with the test worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


# ---------------------------------------------------------------------- the test side
class ForkServer:
    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = threading.Lock()
        ready = self._proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the fork server did not start: {ready!r}")

    def _ask(self, **req) -> dict:
        with self._lock:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited ({self._proc.poll()})")
        return json.loads(line)

    def spawn(self, argv: Sequence[str], out: Path, err: Path) -> ForkedProcess:
        pid = self._ask(op="spawn", argv=list(argv), cwd=os.getcwd(), env=dict(os.environ), out=str(out),
                        err=str(err))["pid"]
        return ForkedProcess(self, pid, list(argv))

    def status(self, pid: int) -> int | None:
        return self._ask(op="poll", pid=pid)["status"]


class ForkedProcess:
    """What the tests use of :class:`subprocess.Popen`: ``pid``, ``args``, ``returncode``, ``poll``, ``wait``,
    ``send_signal``, ``terminate``, ``kill``."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self._server, self.pid, self.args, self.returncode = server, pid, args, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# ---------------------------------------------------------------------- the server
def _serve() -> tuple[list[str], str, dict[str, str], str, str] | None:
    """Answer requests until stdin closes (returns None) or, in a forked child, return what it must run."""
    import kdcache.cli.main
    import torch  # noqa: F401  - the imports every child would otherwise pay
    import torchvision  # noqa: F401

    kdcache.cli.main.load_commands()

    done: dict[int, int] = {}
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "spawn":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                return req["argv"], req["cwd"], req["env"], req["out"], req["err"]
            reply = {"pid": pid}
        else:
            pid = req["pid"]
            if pid not in done:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    done[pid] = os.waitstatus_to_exitcode(status)
            reply = {"status": done.get(pid)}
        print(json.dumps(reply), flush=True)
    return None


def _become(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: the process ``python ARGV`` would be (``-m MODULE ...`` or ``SCRIPT ...``), in the
    test's working directory and environment (as it is when the test starts the command)."""
    import random
    import runpy

    import numpy as np

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    np.random.seed()  # a fresh interpreter's numpy seeds from the OS (random reseeds itself at fork)
    random.seed()
    if argv[0] == "-m":  # python -m: sys.path[0] is the working directory
        sys.argv, sys.path[0] = [argv[1], *argv[2:]], cwd
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:  # python SCRIPT: sys.path[0] is the script's folder
        sys.argv, sys.path[0] = list(argv), str(Path(argv[0]).resolve().parent)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    child = _serve()
    if child is not None:
        _become(*child)  # SystemExit from the command ends the child as it would end the interpreter
