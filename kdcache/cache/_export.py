"""Export a cache to one HDF5 file, for tools that read HDF5 but not Zarr.

The file has the cache's layout: every array under the same name with the same shape,
dtype and chunk shape (``sample_key`` as variable-length UTF-8 strings), compressed with
gzip (+ byte shuffle) or lzf. Group and array attributes are copied; HDF5 attributes hold
only scalars and flat arrays, so every attribute that is not a plain scalar (dicts, lists,
None) is stored as a JSON string and named in the root attribute ``kdcache_json_attrs``;
the root attribute ``kdcache_attrs_encoding = "json"`` says so. :func:`read_hdf5_attrs`
decodes them back. A teacher added over the cache's views is the group ``teachers/NAME`` with its own arrays
and attributes, as in the cache.

The copy goes chunk row by chunk row, with as many whole chunk columns (views) per read as
fit a fixed byte budget, so memory stays bounded however large the cache is. The output is
written to a temporary file next to the target and renamed into place at the end: a reader
never sees a half-written file, and an interrupted export leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np
import zarr
from tqdm import tqdm

from kdcache._utils import temp_file
from kdcache.cache._hdf5_options import COMPRESSIONS
from kdcache.cache._integrity import damage_error, scan_cache
from kdcache.cache._store import CacheStore
from kdcache.cache._teachers import TEACHERS, open_teacher, teacher_names
from kdcache.errors import CacheError, ConfigError

__all__ = ["export_hdf5", "read_hdf5_attrs", "ATTRS_ENCODING"]

ATTRS_ENCODING = "json"
_JSON_ATTRS = "kdcache_json_attrs"
_ENCODING_ATTR = "kdcache_attrs_encoding"
_READ_BUDGET = 64 << 20  # bytes per block read: a few dozen chunks of a typical (1024, 1, 1000) fp16 array


def export_hdf5(path: str, out_h5: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None,
                overwrite: bool = False, compression: str = "gzip", progress: bool = False) -> dict[str, Any]:
    """Write the cache at ``path`` to the HDF5 file ``out_h5``; returns what was written.

    Refuses to replace an existing ``out_h5`` unless ``overwrite``.
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    out = os.path.abspath(os.fspath(out_h5))
    if os.path.isdir(out):
        raise CacheError(f"{out} is a directory; give the HDF5 file name to write")
    if os.path.exists(out) and not overwrite:
        raise CacheError(f"{out} exists; pass `overwrite` to replace it")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise CacheError(f"cannot write {out}: directory {parent} does not exist")
    store = CacheStore.open(path, mode="r", storage_options=storage_options)  # validates the cache
    damage = scan_cache(store, decode=False).damage  # missing chunks; corrupt ones fail while copying
    if damage:
        raise damage_error(store.path, damage)
    arrays = store.arrays()
    # the teachers added over the cache's views: each its own group teachers/NAME, as in the cache
    teachers = {n: open_teacher(store, n) for n in teacher_names(store.path, store.storage_options)[1:]}
    for t in teachers.values():
        if damage := scan_cache(t, decode=False).damage:
            raise damage_error(t.path, damage)
    added = {n: t.arrays() for n, t in teachers.items()}
    steps = sum(len(list(_blocks(a))) for a in [*arrays.values(), *(a for d in added.values() for a in d.values())])
    try:
        tmp = temp_file(parent, os.path.basename(out))  # the umask's mode, as a file written in place gets
    except OSError as e:
        raise CacheError(f"cannot write {out}: {e.strerror or e}") from e
    t0 = time.perf_counter()
    try:
        with h5py.File(tmp, "w") as f, tqdm(total=steps, desc="export", unit="block", disable=not progress) as bar:
            _write_attrs(f, dict(store.attrs))
            f.attrs[_ENCODING_ATTR] = ATTRS_ENCODING
            for name, arr in arrays.items():
                _copy_array(f, store, name, arr, compression, bar)
            for n, t in teachers.items():
                _write_attrs(f.require_group(f"{TEACHERS}/{n}"), dict(t.attrs))
                for name, arr in added[n].items():
                    _copy_array(f, t, name, arr, compression, bar, dest=f"{TEACHERS}/{n}/{name}")
        os.replace(tmp, out)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):  # a full disk (h5py: RuntimeError), a vanished directory
            found = re.search(r"error message = '([^']+)'", str(e))  # HDF5's report names the OS error
            reason = getattr(e, "strerror", None) or (found.group(1) if found else str(e).strip().splitlines()[0])
            raise CacheError(f"cannot write {out}: {reason}; nothing was written") from e
        raise
    return {
        "cache": store.path,
        "out": out,
        "compression": compression,
        "arrays": {n: {"shape": list(a.shape), "dtype": "str" if _is_text(a) else str(a.dtype),
                       "chunks": list(a.chunks)} for n, a in arrays.items()},
        "teachers": sorted(teachers),
        "bytes": os.path.getsize(out),
        "seconds": time.perf_counter() - t0,
    }


def read_hdf5_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """The attributes of an exported group or dataset, JSON-encoded ones decoded, as plain Python values."""
    raw = dict(obj.attrs)
    encoded = {str(s) for s in np.atleast_1d(raw.pop(_JSON_ATTRS, np.array([], dtype=object)))}
    raw.pop(_ENCODING_ATTR, None)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in encoded:
            out[k] = json.loads(v.decode() if isinstance(v, bytes) else str(v))
        elif isinstance(v, bytes):
            out[k] = v.decode()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def _write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    encoded: list[str] = []
    for k, v in attrs.items():
        if k in (_JSON_ATTRS, _ENCODING_ATTR):
            raise CacheError(f"attribute name {k!r} is reserved by the HDF5 export")
        if isinstance(v, (bool, int, float, str)) and not (isinstance(v, int) and not -2**63 <= v < 2**63):
            obj.attrs[k] = v
        else:
            obj.attrs[k] = json.dumps(v, sort_keys=True)
            encoded.append(k)
    obj.attrs[_JSON_ATTRS] = np.array(encoded, dtype=h5py.string_dtype("utf-8"))


def _blocks(arr: zarr.Array) -> Iterator[tuple[slice, ...]]:
    """Chunk-aligned selections covering ``arr``: one chunk row at a time, whole chunk columns per read."""
    shape, chunks = arr.shape, arr.chunks
    if not shape:
        yield ()
        return
    rows = max(1, chunks[0])
    if len(shape) == 1:
        for r0 in range(0, shape[0], rows):
            yield (slice(r0, min(r0 + rows, shape[0])),)
        return
    chunk_bytes = math.prod(chunks) * max(1, np.dtype(arr.dtype).itemsize)
    cols = max(1, chunks[1]) * max(1, _READ_BUDGET // max(chunk_bytes, 1))
    for r0 in range(0, shape[0], rows):
        for c0 in range(0, shape[1], cols):
            yield (slice(r0, min(r0 + rows, shape[0])), slice(c0, min(c0 + cols, shape[1])))


def _chunks_of(arr: zarr.Array, sel: tuple[slice, ...]) -> list[tuple[int, ...]]:
    """Chunk coordinates a chunk-aligned selection of :func:`_blocks` covers."""
    first = sel[0].start // arr.chunks[0]
    if len(sel) == 1:
        return [(first,)]
    tail = (0,) * (arr.ndim - 2)
    return [(first, v, *tail) for v in range(sel[1].start, sel[1].stop)]


def _is_text(arr: zarr.Array) -> bool:
    return np.dtype(arr.dtype).kind in ("T", "U", "O")


def _copy_array(f: h5py.File, store: CacheStore, name: str, arr: zarr.Array, compression: str,
                bar: tqdm, dest: str | None = None) -> None:
    is_str = _is_text(arr)
    dtype = h5py.string_dtype("utf-8") if is_str else np.dtype(arr.dtype)
    chunks = tuple(max(1, min(c, s)) for c, s in zip(arr.chunks, arr.shape)) if arr.shape else None
    kw: dict[str, Any] = {"compression": compression}
    if compression == "gzip":
        kw["compression_opts"] = 4
        kw["shuffle"] = not is_str  # byte shuffle helps fixed-width numbers, not string heap pointers
    dset = f.create_dataset(dest or name, shape=arr.shape, dtype=dtype, chunks=chunks, **(kw if chunks else {}))
    for sel in _blocks(arr):
        try:
            block = np.asarray(arr[sel])
        except Exception as e:  # noqa: BLE001 - a chunk's bytes do not decode: name it
            damage = store.locate_damage(name, _chunks_of(arr, sel))
            if not damage:
                raise
            raise damage_error(store.path, damage) from e
        dset[sel] = block.astype(object) if is_str else block
        bar.update(1)
    _write_attrs(dset, dict(arr.attrs))
