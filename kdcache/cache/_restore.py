"""What a dump rerun does before it opens a cache whose metadata is damaged or whose description was edited.

* A lost or unreadable group ``zarr.json`` is rebuilt from the copy of the sealed attributes that
  ``done/zarr.json`` keeps (``kdcache_seal``); the view count is ``done``'s own.
* Sealed attributes edited after the dump are restored from that copy (when the copy is the seal's);
  for a cache made before per-field seals, the identity is restored from the command when the command's
  fingerprint is the one stored.
* A lost or unreadable array ``zarr.json`` is rewritten from what the command knows (the cache's
  geometry from the group attributes, the unit layout from the command, which must be the cache's own).

The chunks are never touched here; the dump then scans every chunk as on any resume (damaged units
are recomputed). When nothing can be rebuilt the error says exactly what to delete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from kdcache.cache._identity import CacheIdentity
from kdcache.cache._layout import UnitLayout
from kdcache.cache._metadata import (
    _read,
    child_nodes,
    metadata_error,
    metadata_location,
    metadata_problem,
    rewrite_metadata,
)
from kdcache.cache._seal import SEAL_ATTR, SEAL_COPY_ATTR, seal_copy, seal_differences
from kdcache.cache._store import FORMAT_VERSION, array_recipes

__all__ = ["restore_metadata"]


def _doc(path: str, name: str, storage_options) -> dict[str, Any] | None:
    try:
        doc = json.loads((_read(path, name, storage_options) or b"").decode("utf-8"))
        return doc if isinstance(doc, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _valid_copy(copy: Any) -> dict[str, Any] | None:
    """The seal copy, if it is one and its values still have its digests."""
    if not isinstance(copy, Mapping) or not isinstance(copy.get("seal"), Mapping) or \
            not isinstance(copy.get("attrs"), Mapping):
        return None
    attrs = {**copy["attrs"], "fingerprint": copy["seal"].get("fingerprint")}
    return dict(copy) if not seal_differences(attrs, copy["seal"]) else None


def restore_metadata(path: str, *, identity: CacheIdentity, layout: UnitLayout,
                     storage_options: Mapping[str, Any] | None = None,
                     log: Callable[[str], None] = print) -> None:
    """Repair the metadata of the cache at ``path`` for the dump command of ``identity`` and ``layout``
    (see the module docstring); raises :class:`~kdcache.errors.CacheMetadataError` naming what to delete."""
    group_problem = metadata_problem(path, "", node="group", storage_options=storage_options)
    kids = child_nodes(path, storage_options)
    if group_problem == "is missing" and not kids:
        return  # nothing there (or nothing Zarr): the dump's usual checks follow
    done_doc = _doc(path, "done", storage_options)
    copy = _valid_copy(((done_doc or {}).get("attributes") or {}).get(SEAL_COPY_ATTR))
    delete = f"delete {path} and dump again"

    if group_problem is not None:
        if copy is None or done_doc is None:
            why = ("done/zarr.json is unreadable too" if done_doc is None
                   else "the cache was made before done/zarr.json kept a copy of its attributes")
            raise metadata_error(path, "", f"{group_problem} and cannot be rebuilt ({why})", hint=delete)
        attrs = {**copy["attrs"], "fingerprint": copy["seal"]["fingerprint"], "ready": True,
                 "num_views": int(done_doc["shape"][1]), SEAL_ATTR: copy["seal"]}
        rewrite_metadata(path, group_attrs=attrs, storage_options=storage_options)
        log(f"{path}: the group metadata {metadata_location(path)} {group_problem}; rebuilt it from the copy of "
            "its sealed attributes in done/zarr.json")

    doc = _doc(path, "", storage_options) or {}
    attrs = dict(doc.get("attributes") or {})
    if "kdcache_format" not in attrs or not attrs.get("ready"):
        return  # not ours, or a half-created cache: the dump's own checks handle both
    seal = attrs.get(SEAL_ATTR) if isinstance(attrs.get(SEAL_ATTR), Mapping) else None
    if copy is not None and (seal is None or seal == copy["seal"] or not isinstance(seal.get("fields"), Mapping)):
        edited = seal_differences(attrs, copy["seal"])
        if edited:
            attrs = {**attrs, **copy["attrs"], "fingerprint": copy["seal"]["fingerprint"], SEAL_ATTR: copy["seal"]}
            rewrite_metadata(path, group_attrs=attrs, storage_options=storage_options)
            log(f"{path}: restored the sealed attributes edited after the dump ({', '.join(edited[:8])}) from the "
                "copy in done/zarr.json")
    elif seal is None and attrs.get("fingerprint") == identity.fingerprint and attrs.get("identity") != \
            identity.to_dict():
        attrs = {**attrs, "identity": identity.to_dict()}
        rewrite_metadata(path, group_attrs=attrs, storage_options=storage_options)
        log(f"{path}: restored the edited identity from this command (its fingerprint is the one stored)")

    names = ["sample_key", "label", *[str(n) for n in attrs.get("view_arrays") or []], "done"]
    damaged = {n: p for n in names
               if (p := metadata_problem(path, n, node="array", storage_options=storage_options)) is not None}
    if not damaged:
        return
    first, problem = next(iter(damaged.items()))
    if int(attrs.get("kdcache_format", 0)) != FORMAT_VERSION or not attrs.get("checksums"):
        raise metadata_error(path, first, f"{problem} and cannot be rewritten (a cache of format "
                             f"{attrs.get('kdcache_format')} made before checksums or seals)", hint=delete)
    cached = CacheIdentity.from_dict(attrs["identity"])
    if identity.differences(cached) or layout.names != list(attrs["view_arrays"]):
        raise metadata_error(path, first, f"{problem}; this command is not the one that made the cache, so it "
                             "cannot rewrite it", hint=f"rerun the command that made it, or {delete}")
    recipes = array_recipes(int(attrs["num_samples"]), int(attrs["num_views"]), layout, int(attrs["block_size"]),
                            seal_copy(attrs) if isinstance(attrs.get(SEAL_ATTR), Mapping) else None)
    rewrite_metadata(path, arrays={n: recipes[n] for n in damaged}, storage_options=storage_options)
    log(f"{path}: rewrote the metadata of {', '.join(damaged)} ({'; '.join(f'{n} {p}' for n, p in damaged.items())}); "
        "checking their chunks")

