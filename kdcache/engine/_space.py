"""A write that fails for want of space says where, how much to free, and how to resume.

``No space left on device`` alone names neither the file nor the filesystem; a dump stopped by it keeps
every finished unit, so the message says which path failed, what is free there now, roughly how much the
rest of the cache needs, and that running the same command again resumes.
"""

from __future__ import annotations

import errno
import os
import shutil

from kdcache.errors import CacheError

__all__ = ["write_error", "space_hint", "FULL"]

FULL = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: float) -> str:
    for unit, size in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _free(path: str) -> str:
    """Free space on the filesystem holding ``path`` (its nearest existing parent), in words."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return f"{_mb(shutil.disk_usage(p).free)} free there now"
    except OSError:
        return "free space unknown"


def _needed(store) -> str:
    """Roughly what the units still to compute take, from what the finished ones take on disk."""
    try:
        du = store.done_units()
        done, left = int(du.sum()), int(du.size - du.sum())
        used = store.nbytes_on_disk()
    except Exception:  # noqa: BLE001 - a best-effort estimate for a message
        return ""
    if not left or not done or not used:
        return ""
    return f"; the {left} units left need about {_mb(used / done * left)}"


def write_error(out: str, e: OSError, where: str, store=None) -> CacheError:
    """The one-line error of a failed cache write at ``where``; for a full disk, what to free and how to resume."""
    target = str(e.filename) if getattr(e, "filename", None) else str(out)
    if e.errno in FULL:  # (e.strerror: "No space left on device" / "Disk quota exceeded")
        local = "://" not in str(out)
        room = f" ({_free(target)}{_needed(store) if store is not None else ''})" if local else ""
        return CacheError(f"writing {out} failed at {where}: {e.strerror} writing {target}{room}; earlier units are "
                          f"intact: free space on that filesystem (delete files there, or move {out} and its .locks "
                          "folder to a larger disk), then rerun the same command to resume")
    return CacheError(f"writing {out} failed at {where}: {e.strerror or e} ({target}); earlier units are intact, "
                      "rerun to resume")


def space_hint(e: OSError, out: str) -> str:
    """For a full disk: "; (where) ... free space there, then run the same command again" (else "")."""
    if e.errno not in FULL:
        return ""
    target = str(e.filename) if getattr(e, "filename", None) else str(out)
    free = f" ({_free(target)})" if "://" not in str(out) else ""
    return (f" writing {target}{free}; free space on that filesystem (or choose an `out` on a larger disk), then "
            "run the same command again")
