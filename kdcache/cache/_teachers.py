"""Several teachers over one cache's views: where each teacher's targets live and how they are opened.

A cache is made by one dump: its views (the recorded parameters) and the targets of the teacher that drew
them, the teacher named ``main``. Any number of teachers are added later over the *same* recorded views
(``kdcache add-teacher``); each is a cache group of its own under ``teachers/<name>/``: ``sample_key``,
``label``, ``done`` and its target arrays (``logits`` or ``topk_*``, ``argmax``, ``embedding``), chunked
unit by unit exactly as the main cache, with its own identity (teacher, targets, and the main cache's views),
fingerprint, seal, writer lock, resume, damage scan and repair. It holds no view parameters: those are the
main cache's, and the attribute ``views_of`` (the main cache's fingerprint) ties the teacher to them.

Adding a teacher never rewrites the main cache: students reading it meanwhile are undisturbed, and a
kdcache that predates added teachers still reads the main cache (the teachers' groups carry format 5).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from kdcache.cache._metadata import META
from kdcache.cache._remote import is_url
from kdcache.cache._store import CacheStore
from kdcache.errors import CacheMismatchError, CacheNotFoundError, ConfigError

__all__ = ["MAIN", "TEACHERS", "TEACHERS_FORMAT", "check_name", "make_teachers_group", "teacher_path", "teacher_names", "open_teacher",
           "open_teachers", "common_done_units"]

MAIN = "main"            # the teacher of the dump that made the cache (and drew its views)
TEACHERS = "teachers"    # the folder of the added teachers' groups
TEACHERS_FORMAT = 5      # the format of an added teacher's group
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str, *, adding: bool = False) -> str:
    """A teacher name: letters, digits, ``_ . -`` (a folder name on every store); ``main`` is the cache's own
    teacher and cannot be added."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".locks"):
        raise ConfigError(f"teacher name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                          "letter or digit")
    if adding and name == MAIN:
        raise ConfigError(f"teacher name {MAIN!r} is the cache's own teacher (the dump that made it); "
                          "choose another name")
    return name


def teacher_path(root: str, name: str) -> str:
    """Where teacher ``name``'s group lives inside the cache at ``root``."""
    check_name(name)
    if name == MAIN:
        return str(root)
    if is_url(root):
        return f"{str(root).rstrip('/')}/{TEACHERS}/{name}"
    return os.path.join(str(root), TEACHERS, name)


def make_teachers_group(root: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Create the ``teachers`` group of the cache at ``root`` if it is missing (a Zarr group of its own, so zarr
    recognises the folder; the main group's metadata is not touched)."""
    base = f"{str(root).rstrip('/')}/{TEACHERS}" if is_url(root) else os.path.join(str(root), TEACHERS)
    kw = {"storage_options": dict(storage_options)} if storage_options and is_url(root) else {}
    zarr.open_group(base, mode="a", **kw)


def teacher_names(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """``main`` and the added teachers of the cache at ``root`` (those whose group metadata exists), sorted."""
    base = f"{str(root).rstrip('/')}/{TEACHERS}" if is_url(root) else os.path.join(str(root), TEACHERS)
    try:
        if not is_url(root):
            names = [n for n in sorted(os.listdir(base)) if os.path.exists(os.path.join(base, n, META))]
        else:
            import fsspec

            fs, p = fsspec.core.url_to_fs(base, **dict(storage_options or {}))
            names = sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False))
            names = [n for n in names if fs.exists(f"{p.rstrip('/')}/{n}/{META}")]
    except (FileNotFoundError, NotADirectoryError):
        names = []
    return [MAIN] + [n for n in names if _NAME.match(n) and n != MAIN]


def open_teacher(root: CacheStore, name: str, *, mode: str = "r") -> CacheStore:
    """The store holding teacher ``name``'s targets over ``root``'s views (``root`` itself for ``main``).

    An added teacher must be over these very views (``views_of`` is the main cache's fingerprint) and have
    the main cache's samples and blocks; otherwise a one-line :class:`CacheMismatchError`."""
    check_name(name)
    if name == MAIN:
        return root
    names = teacher_names(root.path, root.storage_options)
    if name not in names:
        raise CacheNotFoundError(f"{root.path} has no teacher {name!r} (its teachers: {', '.join(names)}); add it "
                                 "with `kdcache add-teacher`")
    store = CacheStore.open(teacher_path(root.path, name), mode=mode, storage_options=root.storage_options)
    check_views_of(root, store, name)
    return store


def check_views_of(root: CacheStore, store: CacheStore, name: str) -> None:
    """Teacher ``name``'s group ``store`` holds targets of ``root``'s views (same fingerprint, samples, blocks)."""
    problems = []
    if store.attrs.get("views_of") != root.identity.fingerprint:
        problems.append(f"its views are those of cache {str(store.attrs.get('views_of'))[:12]}..., not of this "
                        f"cache ({root.identity.fingerprint[:12]}...)")
    if store.num_samples != root.num_samples or store.block_size != root.block_size:
        problems.append(f"{store.num_samples} samples in blocks of {store.block_size}, the cache "
                        f"{root.num_samples} in blocks of {root.block_size}")
    if problems:
        raise CacheMismatchError(f"teacher {name!r} of {root.path} ({store.path}) does not belong to this cache: "
                                 f"{'; '.join(problems)}; delete it and add it again")


def open_teachers(root: CacheStore, names: Sequence[str]) -> dict[str, CacheStore]:
    """Each named teacher's store (a name given twice is refused)."""
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise ConfigError(f"teacher {seen[0]!r} is named twice; name each teacher once")
    return {n: open_teacher(root, n) for n in names}


def common_done_units(root: CacheStore, stores: Sequence[CacheStore]) -> np.ndarray:
    """(blocks, V) units done in the main cache and in every one of ``stores`` (a teacher added before views were
    added to the cache has fewer views: those read as not done)."""
    done = root.done_units()
    for s in stores:
        if s is root:
            continue
        du = s.done_units()
        mine = np.zeros_like(done)
        mine[:, : min(du.shape[1], done.shape[1])] = du[:, : done.shape[1]]
        done &= mine
    return done
