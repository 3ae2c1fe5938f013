"""The teacher cache (the only package that imports zarr). Format: docs/cache-format.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache._lazy import lazy_names

if TYPE_CHECKING:
    from kdcache.cache._identity import CacheIdentity, canonical_json, dataset_identity, sha256_json
    from kdcache.cache._layout import UnitLayout
    from kdcache.cache._store import DEFAULT_BLOCK_SIZE, FORMAT_VERSION, CacheStore, is_url
    from kdcache.cache._targets import TargetMode, smallest_int_dtype

# name -> the module that defines it, imported on first access (the CLI's options import no zarr)
_LAZY = {"CacheIdentity": "._identity", "canonical_json": "._identity", "dataset_identity": "._identity",
         "sha256_json": "._identity", "UnitLayout": "._layout", "DEFAULT_BLOCK_SIZE": "._store",
         "FORMAT_VERSION": "._store", "CacheStore": "._store", "is_url": "._store", "TargetMode": "._targets",
         "smallest_int_dtype": "._targets"}

__all__ = [
    "CacheIdentity",
    "CacheStore",
    "DEFAULT_BLOCK_SIZE",
    "FORMAT_VERSION",
    "TargetMode",
    "UnitLayout",
    "canonical_json",
    "dataset_identity",
    "is_url",
    "sha256_json",
    "smallest_int_dtype",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
