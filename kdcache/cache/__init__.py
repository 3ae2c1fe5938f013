"""The teacher cache (the only package that imports zarr). Format: docs/cache-format.md."""

from kdcache.cache._identity import CacheIdentity, canonical_json, dataset_identity, sha256_json
from kdcache.cache._layout import UnitLayout
from kdcache.cache._store import DEFAULT_BLOCK_SIZE, FORMAT_VERSION, CacheStore, is_url
from kdcache.cache._targets import TargetMode, smallest_int_dtype

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
