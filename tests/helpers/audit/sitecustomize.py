"""Record which process writes which files, for the distributed tests (not part of kdcache).

Loaded at interpreter start-up when tests/helpers/audit is on PYTHONPATH. When the environment
sets ``KDCACHE_AUDIT_DIR``, a :func:`sys.addaudithook` hook records each file opened for
writing, renamed into place, linked, created or removed under the ``os.pathsep``-separated paths
of ``KDCACHE_AUDIT_WATCH``; at exit the records go to ``KDCACHE_AUDIT_DIR/rank<RANK>-<pid>.json``
(rank -1 outside torchrun's workers, e.g. the launcher or a single process). The command itself
runs unmodified (``torchrun ... -m kdcache ...``), so the tests check the real code path.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

_DIR = os.environ.get("KDCACHE_AUDIT_DIR")
_RANK = int(os.environ.get("RANK", "-1"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install() -> None:
    watch = [os.path.realpath(p) for p in os.environ.get("KDCACHE_AUDIT_WATCH", "").split(os.pathsep) if p]
    records: list[tuple[str, str]] = []
    state = {"closing": False}

    def watched(path) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return None
        full = os.path.realpath(os.fspath(path))
        return full if any(full == w or full.startswith(w + os.sep) for w in watch) else None

    def hook(event: str, args: tuple) -> None:
        if state["closing"]:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and (p := watched(path)):
                records.append((event, p))
        elif event in ("os.rename", "os.link"):
            if p := watched(args[1]):
                records.append((event, p))
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"):
            if p := watched(args[0]):
                records.append((event, p))

    def dump() -> None:
        state["closing"] = True
        with open(os.path.join(_DIR, f"rank{_RANK}-{os.getpid()}.json"), "w") as f:
            json.dump({"rank": _RANK, "pid": os.getpid(), "writes": records}, f)

    atexit.register(dump)
    sys.addaudithook(hook)


if _DIR:
    _install()
