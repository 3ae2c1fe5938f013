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
from kdcache.cache._seal import (
    SEAL_ATTR,
    SEAL_COPY_ATTR,
    SEALED_FORMAT,
    intact_copy,
    make_seal,
    seal_copy,
    seal_differences,
    seal_problem,
    seal_required,
)
from kdcache.cache._store import array_recipes
from kdcache.errors import CacheMetadataError

__all__ = ["restore_metadata", "unseal", "sealed_copy"]


def _doc(path: str, name: str, storage_options) -> dict[str, Any] | None:
    try:
        doc = json.loads((_read(path, name, storage_options) or b"").decode("utf-8"))
        return doc if isinstance(doc, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def sealed_copy(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The sealed attributes as created (the copy in ``done/zarr.json``, when it is one and intact): what a
    dump rerun restores, so what it must go by before it has restored anything."""
    copy = intact_copy((((_doc(path, "done", storage_options) or {}).get("attributes")) or {}).get(SEAL_COPY_ATTR))
    return dict(copy["attrs"]) if copy is not None else None


def restore_metadata(path: str, *, identity: CacheIdentity, layout: UnitLayout,
                     storage_options: Mapping[str, Any] | None = None,
                     log: Callable[[str], None] = print,
                     described: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Repair the metadata of the cache at ``path`` for the dump command of ``identity`` and ``layout``
    (see the module docstring); raises :class:`~kdcache.errors.CacheMetadataError` naming what to delete.

    Returns the attributes as they were before a reseal without a copy (see :func:`_reseal`), else None:
    the caller must then check stored targets against the teacher and call :func:`unseal` with them when
    they do not match. ``described``: the command's descriptive attributes (``view_spec``, ``teacher``,
    ``dataset``), which a reseal without a copy takes over."""
    group_problem = metadata_problem(path, "", node="group", storage_options=storage_options)
    kids = child_nodes(path, storage_options)
    if group_problem == "is missing" and not kids:
        return None  # nothing there (or nothing Zarr): the dump's usual checks follow
    done_doc = _doc(path, "done", storage_options)
    raw_copy = ((done_doc or {}).get("attributes") or {}).get(SEAL_COPY_ATTR)
    copy = intact_copy(raw_copy)
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
        return None  # not ours, or a half-created cache: the dump's own checks handle both
    seal = attrs.get(SEAL_ATTR) if seal_problem(attrs.get(SEAL_ATTR)) is None else None
    resealed: dict[str, Any] | None = None
    if copy is not None and (seal != copy["seal"] or seal_differences(attrs, copy["seal"])):
        edited = seal_differences(attrs, copy["seal"])
        if seal != copy["seal"]:
            edited.append("seal (missing)" if SEAL_ATTR not in attrs else "seal")
        attrs = {**attrs, **copy["attrs"], "fingerprint": copy["seal"]["fingerprint"], SEAL_ATTR: copy["seal"]}
        rewrite_metadata(path, group_attrs=attrs, storage_options=storage_options)
        log(f"{path}: restored the sealed attributes edited after the dump ({', '.join(edited[:8])}) from the "
            "copy in done/zarr.json")
    elif copy is None and seal is not None and raw_copy is not None and not seal_differences(attrs, seal) \
            and isinstance(done_doc, dict) and list(attrs.get("view_arrays") or []) == layout.names:
        _write_sealed(path, attrs, int(done_doc["shape"][1]), layout, storage_options)  # an edited copy
        log(f"{path}: the seal copy in done/zarr.json was edited; rewrote it from the seal, which still matches "
            "the description")
    elif seal is None and seal_required(attrs, None) and copy is None:
        attrs, resealed = _reseal(path, attrs, identity, layout, done_doc, storage_options, log, described or {})
    elif seal is None and attrs.get("fingerprint") == identity.fingerprint and attrs.get("identity") != \
            identity.to_dict():
        attrs = {**attrs, "identity": identity.to_dict()}
        rewrite_metadata(path, group_attrs=attrs, storage_options=storage_options)
        log(f"{path}: restored the edited identity from this command (its fingerprint is the one stored)")

    names = ["sample_key", "label", *[str(n) for n in attrs.get("view_arrays") or []], "done"]
    damaged = {n: p for n in names
               if (p := metadata_problem(path, n, node="array", storage_options=storage_options)) is not None}
    if not damaged:
        return resealed
    first, problem = next(iter(damaged.items()))
    if int(attrs.get("kdcache_format", 0)) < SEALED_FORMAT or not attrs.get("checksums"):
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
    return resealed



def _reseal(path: str, attrs: dict[str, Any], identity: CacheIdentity, layout: UnitLayout, done_doc: Any,
            storage_options, log: Callable[[str], None], described: Mapping[str, Any]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sealed cache whose seal is missing or garbled and whose copy is gone too: resealed from its stored
    attributes when they describe this command (the caller then checks stored targets against the teacher);
    otherwise refused, naming what to do."""
    problem = "is missing" if SEAL_ATTR not in attrs else seal_problem(attrs[SEAL_ATTR])
    why = ("done/zarr.json is unreadable too" if not isinstance(done_doc, dict) else
           "this command is not the one the stored identity describes"
           if attrs.get("fingerprint") != identity.fingerprint or attrs.get("identity") != identity.to_dict()
           or list(attrs.get("view_arrays") or []) != layout.names else None)
    if why is not None:
        raise CacheMetadataError(
            f"cache {path}: attribute 'seal' {problem}, done/zarr.json keeps no copy of it and {why}, so nothing "
            "says what its targets mean; rerun the exact command that made it, or delete the cache and dump again",
            file=metadata_location(path), problem=problem)
    before = dict(attrs)
    # what the command describes (the views, the teacher, the data) is taken from it; its configuration and
    # software versions stay as stored (those of the run that computed the targets)
    unsealed = {k: v for k, v in attrs.items() if k != SEAL_ATTR}
    unsealed.update({k: described[k] for k in ("view_spec", "teacher", "dataset") if k in described})
    attrs = {**unsealed, SEAL_ATTR: make_seal(unsealed)}
    _write_sealed(path, attrs, int(done_doc["shape"][1]), layout, storage_options)
    log(f"{path}: attribute 'seal' {problem} and done/zarr.json keeps no copy; resealed it from the stored "
        "attributes, which are this command's (checking stored targets against the teacher)")
    return attrs, before


def _write_sealed(path: str, attrs: Mapping[str, Any], num_views: int, layout: UnitLayout,
                  storage_options) -> None:
    recipes = array_recipes(int(attrs["num_samples"]), num_views, layout, int(attrs["block_size"]),
                            seal_copy(attrs) if SEAL_ATTR in attrs else None)
    rewrite_metadata(path, group_attrs=attrs, arrays={"done": recipes["done"]}, storage_options=storage_options)


def unseal(path: str, before: Mapping[str, Any], layout: UnitLayout,
           storage_options: Mapping[str, Any] | None = None) -> None:
    """Undo :func:`_reseal` (its stored targets did not match): the attributes as they were, no seal copy."""
    done_doc = _doc(path, "done", storage_options) or {}
    _write_sealed(path, dict(before), int((done_doc.get("shape") or [0, before.get("num_views", 1)])[1]), layout,
                  storage_options)
