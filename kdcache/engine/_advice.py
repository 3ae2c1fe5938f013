"""No circular advice: a reader's "rerun the dump-teacher command that made this cache" is wrong when the
reader *is* that rerun.

Errors raised when a cache is opened end with what to do, and for a reader that is a dump rerun (which
restores edited attributes, rewrites damaged metadata and recomputes damaged units). When the dump itself
still cannot open the cache after its repairs, that advice would send the user round in a circle, so the
dump replaces it by what is left to do.
"""

from __future__ import annotations

import copy

from kdcache.errors import KdcacheError

__all__ = ["from_the_rerun"]

_PHRASES = ("the dump-teacher command that made",)


def from_the_rerun(e: KdcacheError, out: str) -> KdcacheError:
    """``e`` with its "rerun the dump-teacher command that made this cache" clause replaced (same type and
    attributes); ``e`` itself when it has none."""
    msg = str(e)
    at = min((i for p in _PHRASES if (i := msg.find(p)) >= 0), default=-1)
    if at < 0:
        return e
    cut = msg.rfind("; ", 0, at)
    head = msg[:cut] if cut >= 0 else msg[:at].rstrip(" (,")
    new = copy.copy(e)
    new.args = (f"{head}; this dump-teacher run could not repair that itself: delete {out} and dump again (or, if "
                "another command made it, rerun that one)",)
    return new
