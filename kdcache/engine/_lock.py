"""Writer locks: two dumps into one store never race; the later one refuses, naming the writer it found.

Lock files sit beside the store, in ``OUT.locks/`` (creating a store wipes its directory, so they cannot
live inside it). Each is a small JSON document ``{pid, host, started, heartbeat, work}``:

* ``meta`` — held while a dump prepares the store (creation, metadata repair, added views) and decides
  which work it takes; held for seconds, waited for by the others;
* ``all`` — a dump of the whole store; ``shard-I-of-N`` — a ``--shard I/N`` job (its blocks ``b % N == I``).

A dump refuses to start when a live lock covers work it would do (``all`` against anything; a shard against
``all``, the same shard, or shards of another N). A lock is *stale*, and taken over, when its pid is dead
on this host, or, for a writer on another host, its heartbeat (refreshed by a background thread every
``min(30, timeout / 10)`` seconds) is older than ``KDCACHE_LOCK_TIMEOUT`` seconds (default 600). Local files are created with ``O_EXCL``; fsspec stores get
a best-effort create-then-read-back (most object stores have no exclusive create).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from kdcache.errors import CacheBusyError, CacheError, ConfigError

__all__ = ["Shard", "WriterLock", "lock_dir", "parse_shard"]

_TIMEOUT_ENV = "KDCACHE_LOCK_TIMEOUT"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None for None."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"`shard` must be I/N (e.g. 0/3), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"`shard` I/N needs 0 <= I < N, got {text!r}")
    return i, n


Shard = tuple[int, int]


def lock_dir(out: str) -> str:
    return str(out).rstrip("/") + ".locks"


def _timeout() -> float:
    try:
        return float(os.environ.get(_TIMEOUT_ENV, "600"))
    except ValueError:
        return 600.0


def _now() -> float:
    return time.time()


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Files:
    """Create-exclusive / read / replace / delete of small files, on local disk or an fsspec URL."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None):
        self.root = root
        self.url = "://" in root
        if self.url:
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(root, **dict(storage_options or {}))

    def path(self, name: str) -> str:
        return f"{self.base.rstrip('/')}/{name}" if self.url else os.path.join(self.root, name)

    def location(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}" if self.url else os.path.join(self.root, name)

    def create(self, name: str, data: bytes) -> bool:
        if self.url:
            try:
                if self.fs.exists(self.path(name)):
                    return False
                self.fs.pipe_file(self.path(name), data)
            except FileNotFoundError as e:  # e.g. no such bucket: the store cannot be made either
                raise CacheError(f"cannot create {self.root[: -len('.locks')]}: {e.strerror or e}") from e
            return self.read(name) == data  # best effort: the last writer wins, the others see it
        try:
            fd = os.open(self.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # made on first use (and removed by the last writer to finish)
            self._make_root()
            return self.create(name, data)
        except OSError as e:
            raise self._cannot(e) from e
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _cannot(self, e: OSError) -> CacheError:
        out = self.root[: -len(".locks")]
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            what = "is not a directory" if os.path.exists(parent) else "does not exist"
            return CacheError(f"cannot create {out}: {parent} {what}")
        return CacheError(f"cannot create {out}: cannot make its lock folder {self.root}: {e.strerror or e}")

    def _make_root(self) -> None:
        try:
            os.mkdir(self.root)
        except FileExistsError:
            pass
        except OSError as e:
            raise self._cannot(e) from e

    def replace(self, name: str, data: bytes) -> None:
        if self.url:
            self.fs.pipe_file(self.path(name), data)
            return
        tmp = self.path(f".{name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path(name))

    def read(self, name: str) -> bytes | None:
        try:
            if self.url:
                return self.fs.cat_file(self.path(name))
            with open(self.path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        try:
            if self.url:
                self.fs.rm_file(self.path(name))
            else:
                os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        try:
            if self.url:
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.base, detail=False))
            return sorted(os.listdir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []


class WriterLock:
    """The writer lock of one dump (see the module docstring): :meth:`acquire` under the ``meta`` lock,
    :meth:`heartbeat` while writing, :meth:`release` at the end (also after a failure)."""

    def __init__(self, out: str, shard: Shard | None = None, *, storage_options: Mapping[str, Any] | None = None):
        self.out = str(out)
        self.shard = shard
        self.name = "all" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
        self.files = _Files(lock_dir(out), storage_options)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = _now()
        self.held: list[str] = []
        self._last_beat = 0.0
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start_beats(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="kdcache-lock-heartbeat", daemon=True)
            self._thread.start()

    # ----------------------------------------------------------------- documents
    def _doc(self) -> bytes:
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started, "heartbeat": _now(),
                           "work": self.name, "out": self.out}, sort_keys=True).encode()

    def _holder(self, name: str) -> dict[str, Any] | None:
        """The live holder of lock ``name`` (None when free or stale; a stale lock is removed)."""
        raw = self.files.read(name)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            pid, host, beat = int(doc["pid"]), str(doc["host"]), float(doc["heartbeat"])
        except (ValueError, KeyError, TypeError):
            doc, pid, host, beat = {}, -1, "", 0.0  # unreadable (a writer killed mid-write): judged by age
            beat = self._mtime(name)
        if (host == self.host and pid == self.pid) and doc.get("started") == self.started:
            return None  # our own
        # On this host the pid decides (a live writer may go long between heartbeats); elsewhere, the heartbeat.
        stale = (not _pid_alive(pid)) if host == self.host and pid > 0 else _now() - beat > _timeout()
        if stale:
            if self.files.read(name) == raw:  # nobody took it over meanwhile
                self.files.delete(name)
            return None
        return doc

    def _mtime(self, name: str) -> float:
        try:
            return os.path.getmtime(self.files.path(name)) if not self.files.url else 0.0
        except OSError:
            return 0.0

    def _describe(self, doc: dict[str, Any], name: str) -> str:
        seen = _now() - float(doc.get("heartbeat", 0))
        return (f"pid {doc.get('pid')} on host {doc.get('host')}, {doc.get('work')}, started "
                f"{_stamp(float(doc.get('started', 0)))}, last seen {seen:.0f} s ago; lock {self.files.location(name)}")

    # ----------------------------------------------------------------- meta lock
    def hold_meta(self, *, wait: float | None = None, poll: float = 0.05, log: Callable[[str], None] = print) -> None:
        """Take the ``meta`` lock, waiting while a live process holds it."""
        deadline = _now() + (_timeout() if wait is None else wait)
        told = False
        while not self.files.create("meta", self._doc()):
            holder = self._holder("meta")
            if holder is None:
                continue
            if not told:
                log(f"{self.out}: waiting for another dump-teacher preparing it ({self._describe(holder, 'meta')})")
                told = True
            if _now() > deadline:
                raise CacheBusyError(f"{self.out} is being prepared by another dump-teacher "
                                     f"({self._describe(holder, 'meta')}); try again when it has started")
            time.sleep(poll)
        self.held.append("meta")
        self._start_beats()

    def release_meta(self) -> None:
        with self._mutex:
            if "meta" in self.held:
                self.held.remove("meta")
                self.files.delete("meta")

    # ----------------------------------------------------------------- writer lock
    def _conflicts(self, other: str) -> bool:
        if other in ("meta",) or other.startswith(".") or other == self.name:
            return other == self.name
        if not (other == "all" or other.startswith("shard-")):
            return False
        if self.shard is None or other == "all":
            return True
        return not other.endswith(f"-of-{self.shard[1]}")  # shards of another N overlap this one

    def acquire(self) -> None:
        """Take this dump's writer lock (call while holding ``meta``); refuse when a live writer covers
        the same work."""
        for other in self.files.names():
            if self._conflicts(other):
                holder = self._holder(other)
                if holder is not None:
                    hint = ("run independent jobs with --shard I/N, or wait for it to finish" if other == "all"
                            or self.shard is None else "wait for it to finish (or for its lock to go stale)")
                    raise CacheBusyError(f"{self.out} is being written by another dump-teacher "
                                         f"({self._describe(holder, other)}); {hint}")
        self.files.delete(self.name)  # stale (checked above) or absent
        if not self.files.create(self.name, self._doc()):
            holder = self._holder(self.name) or {}
            raise CacheBusyError(f"{self.out} is being written by another dump-teacher "
                                 f"({self._describe(holder, self.name)})")
        self.held.append(self.name)
        self._start_beats()

    def heartbeat(self) -> None:
        """Refresh the heartbeat of every lock held (a background thread does it every few seconds)."""
        with self._mutex:
            for name in list(self.held):
                try:
                    self.files.replace(name, self._doc())
                except OSError:
                    pass  # a missed beat; the next one retries
            self._last_beat = _now()

    def _beat(self) -> None:
        every = max(1.0, min(30.0, _timeout() / 10))
        while not self._stop.wait(every):
            self.heartbeat()

    def release(self) -> None:
        """Give back every lock held; never raises (it runs after failures too)."""
        try:
            self._release()
        except OSError:
            pass

    def _release(self) -> None:
        self._stop.set()
        self.release_meta()
        with self._mutex:
            if self.name in self.held:
                self.held.remove(self.name)
                self.files.delete(self.name)
        if not self.files.url and not self.files.names():
            try:
                os.rmdir(self.files.root)
            except OSError:
                pass
