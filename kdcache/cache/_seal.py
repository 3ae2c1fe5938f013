"""The seal: a cache's description (identity and configuration attributes) checked on every open.

The fingerprint is a sha256 of the identity; nothing used to compare it with the identity it
fingerprints, so a hand-edited ``identity.view_spec.size`` trained students on other views than the
teacher saw. Since this seal, creation also stores ``seal``: a short sha256 of every field of the
attributes that describe what the targets mean (``identity`` and the configuration attributes below,
flattened three levels deep, e.g. ``identity.view_spec.size`` or ``view_spec.spec``). Every open
recomputes the fingerprint and the digests; any difference is a :class:`CacheEditedError` naming the
fields. Caches made before the seal have no digests: only the fingerprint is compared, and a mismatch
says so without naming a field. A copy of the seal lives in the ``done`` array's attributes
(``kdcache_seal``), so a lost or unreadable group ``zarr.json`` can be rebuilt by the dump command
that made the cache, which knows every sealed value and whose digests must equal the copy's.

A cache of format 3 or later (and any cache whose ``done`` keeps a seal copy) is always sealed at
creation, so a missing ``seal``, or one that does not parse, is damage (:class:`CacheMetadataError`
naming the attribute), never "a cache from before seals". Every open also compares the seal with its
copy: a seal recomputed by hand after an edit (fingerprint and digests both redone) no longer equals
the copy and is refused too. What a careless edit cannot get past is therefore any edit of the group
attributes, with or without the fingerprint and the seal recomputed; only an edit that rewrites the
group attributes *and* the copy in ``done/zarr.json`` consistently (a forgery, not a slip) passes the
seal, and ``kdcache verify`` (which replays views through the teacher) is what catches that one.

Attributes a dump changes later (``num_views``, ``last_add``, ``ready``) are not sealed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from kdcache.cache._identity import CacheIdentity, canonical_json
from kdcache.cache._metadata import metadata_location
from kdcache.errors import CacheEditedError, CacheMetadataError

__all__ = ["SEALED_ATTRS", "SEAL_ATTR", "SEAL_COPY_ATTR", "CacheEditedError", "make_seal", "seal_differences",
           "check_seal", "stored_copy", "intact_copy", "seal_copy", "field_digests", "seal_problem", "seal_required", "SEALED_FORMAT"]

SEAL_ATTR = "seal"
SEAL_COPY_ATTR = "kdcache_seal"  # the copy in done/zarr.json
SEAL_VERSION = 1
SEALED_FORMAT = 3   # from this cache format on, creation always seals
_REDO = ("rerun the dump-teacher command that made this cache to restore it (it reseals the cache when its stored "
         "targets still match), or delete the cache and dump again")
# What the targets mean and how the store is laid out: fixed at creation.
SEALED_ATTRS = ("kdcache_format", "checksums", "identity", "targets", "num_samples", "num_classes", "block_size",
                "view_arrays", "view_spec", "teacher", "dataset", "config", "software")
_DEPTH = 3          # identity.view_spec.size, view_spec.spec.size, config.data.source
_DIGEST_CHARS = 16  # 64 bits: a hand edit, not an adversary


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:_DIGEST_CHARS]


def _flatten(value: Any, name: str, depth: int, out: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value and depth > 1:
        for k in value:
            _flatten(value[k], f"{name}.{k}", depth - 1, out)
    else:
        out[name] = _digest(value)


def field_digests(attrs: Mapping[str, Any]) -> dict[str, str]:
    """A digest per sealed field (absent attributes are simply absent)."""
    out: dict[str, str] = {}
    for name in SEALED_ATTRS:
        if name in attrs:
            _flatten(attrs[name], name, _DEPTH, out)
    return out


def make_seal(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``seal`` attribute of a cache whose attributes are ``attrs`` (final values, at creation)."""
    return {"version": SEAL_VERSION, "fingerprint": str(attrs["fingerprint"]), "fields": field_digests(attrs)}


def seal_copy(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What ``done/zarr.json`` keeps (``kdcache_seal``): the seal and the sealed attributes' values, enough
    to rebuild a lost group ``zarr.json`` or restore edited attributes."""
    return {"seal": dict(attrs[SEAL_ATTR]), "attrs": {k: attrs[k] for k in SEALED_ATTRS if k in attrs}}


def seal_differences(attrs: Mapping[str, Any], seal: Mapping[str, Any]) -> list[str]:
    """Sealed fields of ``attrs`` that differ from ``seal`` (edited, added or removed), sorted."""
    have, want = field_digests(attrs), dict(seal.get("fields") or {})
    out = []
    for k in sorted(set(have) | set(want)):
        if have.get(k) != want.get(k):
            out.append(k if k in have and k in want else f"{k} ({'added' if k in have else 'removed'})")
    if str(attrs.get("fingerprint")) != str(seal.get("fingerprint")):
        out.append("fingerprint")
    return _collapse(out)


def _collapse(fields: list[str]) -> list[str]:
    """More than three differing fields under one parent (a replaced dict) are named by the parent."""
    parents: dict[str, int] = {}
    for f in fields:
        head = f.split(" ")[0].rsplit(".", 1)[0]
        parents[head] = parents.get(head, 0) + 1
    out: list[str] = []
    for f in fields:
        head = f.split(" ")[0].rsplit(".", 1)[0]
        if "." in f.split(" ")[0] and parents[head] > 3:
            name = f"{head} ({parents[head]} fields)"
            if name not in out:
                out.append(name)
        else:
            out.append(f)
    return out


def seal_problem(seal: Any) -> str | None:
    """What is wrong with a stored ``seal`` value (None when it is a well-formed seal)."""
    if not isinstance(seal, Mapping):
        return f"does not parse (a {type(seal).__name__}, not an object)"
    if seal.get("version") != SEAL_VERSION or isinstance(seal.get("version"), bool):
        return f"does not parse (version {seal.get('version')!r}, not {SEAL_VERSION})"
    fp = seal.get("fingerprint")
    if not isinstance(fp, str) or len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        return "does not parse (its fingerprint is not 64 hex digits)"
    fields = seal.get("fields")
    if not isinstance(fields, Mapping) or not fields:
        return "does not parse (no field digests)"
    if not all(isinstance(v, str) and len(v) == _DIGEST_CHARS for v in fields.values()):
        return f"does not parse (a field digest is not {_DIGEST_CHARS} hex digits)"
    return None


def seal_required(attrs: Mapping[str, Any], copy: Any = None) -> bool:
    """Whether the cache must carry a seal: format 3 or later, or a seal copy in ``done/zarr.json``."""
    try:
        fmt = int(attrs.get("kdcache_format", 0))
    except (TypeError, ValueError):
        fmt = SEALED_FORMAT  # an unparsable format: assume the newest
    return fmt >= SEALED_FORMAT or copy is not None


def _check_present(path: str, attrs: Mapping[str, Any], copy: Any) -> None:
    """A sealed cache's ``seal`` must be there and parse; refused as damage naming the attribute."""
    if SEAL_ATTR not in attrs and not seal_required(attrs, copy):
        return  # a cache from before seals (format 1 or 2): compared by fingerprint below
    loc = metadata_location(path)
    if SEAL_ATTR not in attrs:
        why = (f"format {attrs.get('kdcache_format')}" if copy is None else "its done/zarr.json keeps a seal copy")
        raise CacheMetadataError(f"cache {path}: attribute 'seal' is missing from {loc}, but this cache is always "
                                 f"sealed ({why}): the attribute was deleted{_edited_too(attrs, copy)}; {_REDO}",
                                 file=loc, problem="missing")
    problem = seal_problem(attrs[SEAL_ATTR])
    if problem is not None:
        raise CacheMetadataError(f"cache {path}: attribute 'seal' of {loc} {problem}: it was edited"
                                 f"{_edited_too(attrs, copy)}; {_REDO}", file=loc, problem="does not parse")


def _edited_too(attrs: Mapping[str, Any], copy: Any) -> str:
    """With the seal gone, its copy still says which other fields were edited: named, so an edit is never
    taken for anything else (", and against its copy in done/zarr.json these fields were edited too: ...")."""
    kept = _copy_seal(copy)
    if kept is None or seal_problem(kept) is not None:
        return ""
    edited = seal_differences(attrs, kept)
    if not edited:
        return ""
    named = edited[:8] + ([f"and {len(edited) - 8} more"] if len(edited) > 8 else [])
    return f", and against its copy in done/zarr.json these fields were edited too: {', '.join(named)}"


def stored_copy(group: Any) -> Any:
    """The seal copy of an open group's ``done`` array (None when absent or unreadable: a damaged
    ``done/zarr.json`` is named when the store opens the array)."""
    try:
        return dict(group["done"].attrs).get(SEAL_COPY_ATTR)
    except Exception:  # noqa: BLE001 - zarr's errors for a missing or invalid array zarr.json vary
        return None


def _copy_seal(copy: Any) -> Mapping[str, Any] | None:
    if isinstance(copy, Mapping) and isinstance(copy.get("seal"), Mapping):
        return copy["seal"]
    return None


def intact_copy(copy: Any) -> dict[str, Any] | None:
    """The seal copy, if it is one and its values still have its digests (else None)."""
    if not isinstance(copy, Mapping) or not isinstance(copy.get("seal"), Mapping) or \
            not isinstance(copy.get("attrs"), Mapping) or seal_problem(copy["seal"]) is not None:
        return None
    attrs = {**copy["attrs"], "fingerprint": copy["seal"].get("fingerprint")}
    return dict(copy) if not seal_differences(attrs, copy["seal"]) else None


def check_seal(path: str, attrs: Mapping[str, Any], identity: CacheIdentity | None, copy: Any = None) -> None:
    """Raise :class:`CacheMetadataError` when a sealed cache's seal is missing or does not parse, and
    :class:`CacheEditedError` when the stored description is not the one sealed at creation (or the seal
    is not its copy, ``copy``: the ``kdcache_seal`` attribute of ``done/zarr.json``, None when absent)."""
    _check_present(path, attrs, copy)
    seal = attrs.get(SEAL_ATTR)
    fields: list[str] = []
    if isinstance(seal, Mapping):
        fields = seal_differences(attrs, seal)
    recomputed = identity.fingerprint if identity is not None else None
    if (recomputed is not None and attrs.get("fingerprint") != recomputed and "fingerprint" not in fields
            and not any(f.startswith("identity") for f in fields)):
        fields.append("fingerprint")
    if not fields and copy is not None and intact_copy(copy) is None:
        loc = metadata_location(path, "done")
        raise CacheMetadataError(
            f"cache {path}: the seal copy (attribute 'kdcache_seal') of {loc} was edited: it no longer agrees with "
            "itself; rerun the dump-teacher command that made this cache to rewrite it from the seal, which still "
            "matches the description", file=loc, problem="does not parse")
    kept = _copy_seal(copy)
    if not fields and isinstance(seal, Mapping) and kept is not None and dict(kept) != dict(seal):
        raise CacheEditedError(
            f"cache {path}: its seal no longer equals the copy kept in done/zarr.json (kdcache_seal): the seal was "
            "recomputed by hand after its targets were computed, so the description it now seals is not the one "
            "the targets were computed with; rerun the dump-teacher command that made this cache to restore the "
            "sealed attributes from that copy, or delete the cache and dump again", ["seal"])
    if not fields:
        return
    if not isinstance(seal, Mapping):
        raise CacheEditedError(
            f"cache {path}: its stored fingerprint {str(attrs.get('fingerprint'))[:16]} is not the fingerprint of "
            f"its stored identity ({str(recomputed)[:16]}): the identity or the fingerprint was edited after the targets "
            "were computed (the cache predates per-field seals, so the edited field cannot be named); restore the "
            "original attributes, or delete the cache and dump again", ["fingerprint"])
    named = fields[:8] + ([f"and {len(fields) - 8} more"] if len(fields) > 8 else [])
    raise CacheEditedError(
        f"cache {path}: its description was edited after its targets were computed; these fields no longer "
        f"agree with the seal: {', '.join(named)}; restore them (rerunning the dump-teacher command that made the "
        "cache does), or delete the cache and dump again", fields)
