"""What a dump checks before it loads anything, and the folders it makes for a new cache.

A dump reads its data and builds its teacher (seconds to minutes) before it touches the store;
a mistake that can be seen from the command alone (a device that is not there, an output path
under a file) is refused first. Missing parent folders of a local ``out`` are made, as
``train-student --out`` makes its run directory's, and removed again (when still empty) by a dump
that fails before finishing anything.
"""

from __future__ import annotations

import os

from kdcache._runtime import select_device
from kdcache.cache import is_url
from kdcache.errors import CacheError

__all__ = ["preflight", "make_parents", "remove_empty"]


def preflight(out: str, device: str, *, local_rank: int = 0) -> None:
    """Refuse, before any work, a ``device`` this machine lacks and a local ``out`` that cannot be made."""
    select_device(device, local_rank=local_rank)
    if is_url(out):
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CacheError(f"cannot create {out}: {parent} is not a directory")


def make_parents(out: str) -> list[str]:
    """Make the missing parent folders of a local ``out``; returns those made, outermost first."""
    if is_url(out):
        return []
    missing = []
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    made = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
            made.append(d)
        except FileExistsError:  # another job (a --shard of the same store) made it meanwhile: not ours
            if not os.path.isdir(d):
                raise CacheError(f"cannot create {out}: {d} is not a directory") from None
        except OSError as e:
            raise CacheError(f"cannot create {out}: cannot make {d}: {e.strerror or e}") from e
    return made


def remove_empty(made: list[str]) -> None:
    """Remove folders :func:`make_parents` made, innermost first, while they are empty."""
    for d in reversed(made):
        try:
            os.rmdir(d)
        except OSError:
            return
