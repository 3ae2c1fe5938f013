"""Metadata damage: a missing, empty, truncated or invalid ``zarr.json`` named in one line, and rewritten.

zarr reports a bad ``zarr.json`` as a bare ``JSONDecodeError`` (no file named) and a missing group
``zarr.json`` as "not found" although every array is there. :func:`metadata_problem` reads the file
itself and says what is wrong; :func:`metadata_error` turns that into a :class:`CacheMetadataError`. Opening a
cache runs :func:`check_group_metadata` and reads each attribute through :func:`metadata_attr`.

:func:`rewrite_metadata` is the repair a dump rerun runs: the command that made a cache knows every array's
shape, chunks, dtype and codecs and every attribute, so it rewrites a damaged ``zarr.json`` byte for byte as
creation wrote it (through zarr itself, into a memory store, then copied), leaving the chunks alone; the
dump then checks every chunk as on any resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from kdcache.cache._remote import is_url
from kdcache.errors import CacheMetadataError, KdcacheError

__all__ = ["META", "metadata_location", "metadata_problem", "metadata_error", "metadata_attr",
           "check_group_metadata", "child_nodes", "rewrite_metadata", "METADATA_HINT"]

META = "zarr.json"
METADATA_HINT = ("rerun the dump-teacher command that made this cache to rewrite it (its chunks are kept, "
                 "then checked)")
_PROTOTYPE = default_buffer_prototype()


def metadata_location(path: str, name: str = "") -> str:
    """The path (or URL) of the ``zarr.json`` of node ``name`` ("" for the group)."""
    if is_url(path):
        return "/".join(p for p in (str(path).rstrip("/"), name, META) if p)
    return os.path.join(str(path), name, META) if name else os.path.join(str(path), META)


def _fs(path: str, storage_options: Mapping[str, Any] | None):
    import fsspec

    return fsspec.core.url_to_fs(str(path), **dict(storage_options or {}))


def _read(path: str, name: str, storage_options: Mapping[str, Any] | None) -> bytes | None:
    loc = metadata_location(path, name)
    if not is_url(path):
        try:
            with open(loc, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
    fs, p = _fs(loc, storage_options)
    try:
        return fs.cat_file(p)
    except FileNotFoundError:
        return None


def metadata_problem(path: str, name: str = "", *, node: str | None = None,
                     storage_options: Mapping[str, Any] | None = None) -> str | None:
    """What is wrong with node ``name``'s ``zarr.json`` (None when it is a readable Zarr v3 document).

    ``node``: "group" or "array", the node type it must declare.
    """
    raw = _read(path, name, storage_options)
    if raw is None:
        return "is missing"
    if not raw.strip():
        return "is empty (0 bytes of JSON)" if not raw else "is empty (only whitespace)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (byte {e.start})"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if not text.rstrip().endswith("}") or e.pos >= len(text.rstrip()):
            return f"is truncated ({len(raw)} bytes; the JSON ends before it is complete)"
        return f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
        return "is not Zarr v3 metadata (no \"zarr_format\": 3)"
    if node is not None and doc.get("node_type") != node:
        return f"declares node_type {doc.get('node_type')!r}, not {node!r}"
    return None


def metadata_error(path: str, name: str, problem: str, *, hint: str = METADATA_HINT) -> CacheMetadataError:
    what = f"metadata of array {name!r}" if name else "group metadata"
    loc = metadata_location(path, name)
    return CacheMetadataError(f"cache {path}: the {what} {loc} {problem}; {hint}", file=loc, problem=problem)


def child_nodes(path: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the folders directly under ``path`` that look like Zarr arrays (a ``zarr.json`` or a ``c``
    chunk folder): what is there even when the group's own metadata is lost."""
    try:
        if not is_url(path):
            names = [n for n in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, n))]
            return [n for n in names if os.path.exists(os.path.join(path, n, META))
                    or os.path.isdir(os.path.join(path, n, "c"))]
        fs, p = _fs(path, storage_options)
        names = sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False))
        return [n for n in names if fs.exists(f"{p.rstrip('/')}/{n}/{META}") or fs.exists(f"{p.rstrip('/')}/{n}/c")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _target_store(path: str, storage_options: Mapping[str, Any] | None):
    if is_url(path):
        return zarr.storage.FsspecStore.from_url(str(path), storage_options=dict(storage_options or {}),
                                                 read_only=False)
    return zarr.storage.LocalStore(str(path), read_only=False)


def metadata_attr(path: str, attrs: Mapping[str, Any], key: str, parse):
    """``parse(attrs[key])``; a missing or unparsable attribute is a one-line :class:`CacheMetadataError`."""
    loc = metadata_location(path)
    if key not in attrs:
        raise CacheMetadataError(f"cache {path}: attribute {key!r} is missing from {loc}; rerun the dump-teacher "
                                 "command that made this cache to restore it", file=loc, problem="missing")
    try:
        return parse(attrs[key])
    except (KeyError, TypeError, ValueError, AttributeError, KdcacheError) as e:
        raise CacheMetadataError(f"cache {path}: attribute {key!r} of {loc} does not parse "
                                 f"({type(e).__name__}: {str(e)[:100]}); rerun the dump-teacher command that made "
                                 "this cache to restore it", file=loc, problem="does not parse") from None


def check_group_metadata(path: str, storage_options: Mapping[str, Any] | None) -> None:
    """A group ``zarr.json`` that is missing, empty, truncated or invalid: not found when nothing Zarr is
    there, else a one-line :class:`CacheMetadataError` naming the file (and that the arrays are there)."""
    problem = metadata_problem(path, "", node="group", storage_options=storage_options)
    if problem is None:
        return
    kids = child_nodes(path, storage_options)
    if problem == "is missing" and not kids:
        return  # nothing Zarr here: zarr's own "not found" follows
    there = f" (its arrays {', '.join(kids[:6])}{', ...' if len(kids) > 6 else ''} are there)" if kids else ""
    raise metadata_error(path, "", problem + there)


def rewrite_metadata(path: str, *, group_attrs: Mapping[str, Any] | None = None,
                     arrays: Mapping[str, Mapping[str, Any]] | None = None,
                     storage_options: Mapping[str, Any] | None = None) -> None:
    """Rewrite the group's ``zarr.json`` (with ``group_attrs``) and/or those of ``arrays`` (name ->
    ``create_array`` keyword arguments), exactly as creating them writes them; chunks are not touched."""
    mem = zarr.storage.MemoryStore()
    g = zarr.open_group(mem, mode="w", attributes=dict(group_attrs or {}))
    keys = [META] if group_attrs is not None else []
    for name, kw in (arrays or {}).items():
        g.create_array(name, **dict(kw))
        keys.append(f"{name}/{META}")
    target = _target_store(path, storage_options)
    for key in keys:
        buf = sync(mem.get(key, prototype=_PROTOTYPE))
        sync(target.set(key, buf))
