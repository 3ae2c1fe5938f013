"""Writer locks: two dumps into one store never race; the later one refuses, naming the writer it found.

Lock files sit beside the store, in ``OUT.locks/`` (creating a store wipes its directory, so they cannot
live inside it). Each is a small JSON document ``{pid, host, started, heartbeat, work}``:

* ``meta`` — held while a dump prepares the store (creation, metadata repair, added views) and decides
  which work it takes; held for seconds, waited for by the others;
* ``all`` — a dump of the whole store; ``shard-I-of-N`` — a ``--shard I/N`` job (its blocks ``b % N == I``).

A dump refuses to start when a live lock covers work it would do (``all`` against anything; a shard against
``all``, the same shard, or shards of another N). A lock is *stale*, and taken over, when its pid is dead
on this host, or, for a writer on another host, its heartbeat (refreshed by a background thread every
``min(30, timeout / 10)`` seconds) is older than ``KDCACHE_LOCK_TIMEOUT`` seconds (default 600). A lock file
that is empty, holds anything but a lock document, or cannot be read is stale at once: local files are
created whole (written to a private file, then hard-linked into place, which fails when the name exists), so
no live writer ever shows one. Taking over a stale lock prints one line naming the file and why. fsspec
stores get a best-effort create-then-read-back (most object stores have no exclusive create). A lock file
that cannot be written (disk full) is never left behind, and the dump releases its locks on any failure.
"""

from __future__ import annotations

import errno
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


def _age(t: Any) -> str:
    """How long ago a heartbeat was, in words (never an absurd age: a missing or future stamp says so)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        return "never (no heartbeat recorded)"
    return f"{max(0.0, _now() - float(t)):.0f} s ago"


def _parse(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """A lock document with typed ``pid``, ``host`` and ``heartbeat``, or ({}, why it is not one)."""
    if not raw.strip():
        return {}, "it is empty (left by a writer killed while creating it, or by an older kdcache out of space)"
    try:
        doc = json.loads(raw)
        doc = {**doc, "pid": int(doc["pid"]), "host": str(doc["host"]), "heartbeat": float(doc["heartbeat"])}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}, f"it holds no lock document ({len(raw)} bytes that are not kdcache's lock JSON)"
    return doc, None


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
        # The document is written to a private file first and linked into place (an exclusive create of
        # the whole document): a writer killed or out of space mid-write never leaves an empty lock.
        tmp = self.path(f".{name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except FileNotFoundError:  # made on first use (and removed by the last writer to finish)
            self._make_root()
            return self.create(name, data)
        except OSError as e:
            self._discard(tmp)
            raise self._cannot(e, name) from e
        try:
            os.link(tmp, self.path(name))
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: an exclusive create, removed again if its write fails
            return self._create_excl(name, data)
        finally:
            self._discard(tmp)

    def _create_excl(self, name: str, data: bytes) -> bool:
        try:
            fd = os.open(self.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise self._cannot(e, name) from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            self._discard(self.path(name))
            raise self._cannot(e, name) from e
        return True

    def _discard(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def _cannot(self, e: OSError, name: str | None = None) -> CacheError:
        out = self.root[: -len(".locks")]
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            what = "is not a directory" if os.path.exists(parent) else "does not exist"
            return CacheError(f"cannot create {out}: {parent} {what}")
        what = f"write its lock file {self.path(name)}" if name else f"make its lock folder {self.root}"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return CacheError(f"cannot start writing {out}: cannot {what}: {e.strerror} (nothing was changed); "
                              f"free space on the filesystem of {parent} (df {parent}), then run the same command "
                              "again: it resumes where the cache stands")
        return CacheError(f"cannot create {out}: cannot {what}: {e.strerror or e}")

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
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path(name))
        except OSError:
            self._discard(tmp)  # a failed beat (disk full) leaves nothing behind
            raise

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
            elif os.path.isdir(self.path(name)) and not os.path.islink(self.path(name)):
                os.rmdir(self.path(name))  # an (empty) folder in a lock's place: unreadable, so stale
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
        self._log: Callable[[str], None] = print

    def _start_beats(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="kdcache-lock-heartbeat", daemon=True)
            self._thread.start()

    # ----------------------------------------------------------------- documents
    def _doc(self) -> bytes:
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started, "heartbeat": _now(),
                           "work": self.name, "out": self.out}, sort_keys=True).encode()

    def _holder(self, name: str) -> dict[str, Any] | None:
        """The live holder of lock ``name`` (None when free or stale; a stale lock is removed, saying why)."""
        try:
            raw = self.files.read(name)
        except OSError as e:  # unreadable (permissions, a directory in its place): nobody can be holding it
            return self._take_over(name, None, f"it cannot be read ({e.strerror or e})")
        if raw is None:
            return None
        doc, why = _parse(raw)
        if why is not None:  # empty or garbage: no writer of this version leaves one (see _Files.create)
            return self._take_over(name, raw, why)
        if (doc["host"] == self.host and doc["pid"] == self.pid) and doc.get("started") == self.started:
            return None  # our own
        # On this host the pid decides (a live writer may go long between heartbeats); elsewhere, the heartbeat.
        if doc["host"] == self.host and doc["pid"] > 0:
            if not _pid_alive(doc["pid"]):
                return self._take_over(name, raw, f"its writer, pid {doc['pid']} on this host, is dead")
        elif _now() - doc["heartbeat"] > _timeout():
            return self._take_over(name, raw, f"its writer on host {doc['host']} was last seen "
                                              f"{_age(doc['heartbeat'])} (over {_timeout():.0f} s, "
                                              f"{_TIMEOUT_ENV})")
        return doc

    def _take_over(self, name: str, raw: bytes | None, why: str) -> None:
        """Remove the stale lock ``name`` (unless someone replaced it meanwhile) and say so in one line."""
        try:
            if raw is None or self.files.read(name) == raw:  # nobody took it over meanwhile
                self.files.delete(name)
        except OSError as e:
            raise CacheBusyError(f"{self.out}: the lock {self.files.location(name)} is stale ({why}) but cannot be "
                                 f"removed ({e.strerror or e}); remove it by hand and run the same command again") \
                from None
        self._log(f"{self.out}: took over the stale lock {self.files.location(name)}: {why}")
        return None

    def _describe(self, doc: dict[str, Any], name: str) -> str:
        started = doc.get("started")
        when = _stamp(float(started)) if isinstance(started, (int, float)) and started > 0 else "at an unknown time"
        return (f"pid {doc.get('pid')} on host {doc.get('host')}, {doc.get('work')}, started {when}, last seen "
                f"{_age(doc.get('heartbeat'))}; lock {self.files.location(name)}")

    # ----------------------------------------------------------------- meta lock
    def hold_meta(self, *, wait: float | None = None, poll: float = 0.05, log: Callable[[str], None] = print) -> None:
        """Take the ``meta`` lock, waiting while a live process holds it."""
        self._log = log
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
        self.files.delete(self.name)  # stale (checked above), our own, or absent
        for _ in range(3):  # another dump may race us to it
            if self.files.create(self.name, self._doc()):
                break
            holder = self._holder(self.name)
            if holder is not None:
                raise CacheBusyError(f"{self.out} is being written by another dump-teacher "
                                     f"({self._describe(holder, self.name)})")
        else:
            raise CacheBusyError(f"{self.out}: another dump-teacher keeps taking the lock "
                                 f"{self.files.location(self.name)}; try again in a moment")
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
