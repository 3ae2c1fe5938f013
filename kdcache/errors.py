"""One error hierarchy for kdcache.

Every error a user can cause derives from :class:`KdcacheError`; the CLI turns
them into a one-line message and a non-zero exit. Subclasses also derive from
the builtin a caller would expect (``FileNotFoundError``, ``ValueError``), so
library users can catch either.
"""

from __future__ import annotations

__all__ = [
    "KdcacheError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "ModelError",
    "CheckpointError",
    "CacheError",
    "CacheNotFoundError",
    "CacheMismatchError",
    "CacheIncompleteError",
    "CacheDamagedError",
    "StorageError",
    "CacheEditedError",
    "CacheMetadataError",
    "CacheBusyError",
    "TeacherOutputError",
    "DownloadUnavailableError",
    "RunError",
    "RunNotFoundError",
]


class KdcacheError(Exception):
    """Base class of every error kdcache raises on purpose."""


class ConfigError(KdcacheError, ValueError):
    """A configuration value or config file is invalid."""


class DataError(KdcacheError, ValueError):
    """A dataset is malformed: wrong dtype or shape, bad labels, unreadable image, unknown split."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset path does not exist."""


class ModelError(KdcacheError, ValueError):
    """Unknown model name or bad model arguments."""


class CheckpointError(ModelError):
    """A checkpoint or weights file cannot be loaded into the model (missing/unexpected keys, bad format)."""


class DownloadUnavailableError(KdcacheError, RuntimeError):
    """Something had to be downloaded but the network is not reachable."""


class RunError(KdcacheError, ValueError):
    """A training run's records (``metrics.jsonl``) are malformed or empty."""


class RunNotFoundError(RunError, FileNotFoundError):
    """A run directory does not exist or holds no ``metrics.jsonl``."""


class CacheError(KdcacheError):
    """Base class of teacher-cache errors."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """The cache path does not exist or is not a kdcache store."""


class CacheMismatchError(CacheError, ValueError):
    """The cache belongs to another teacher, dataset, view spec, seed or target mode."""


class StorageError(CacheError, OSError):
    """The storage behind a cache URL cannot be reached, or refuses the credentials (S3 and other fsspec stores)."""


class CacheEditedError(CacheMismatchError):
    """The cache's stored description (identity or configuration) changed after its targets were computed.

    ``fields`` names the attributes that no longer agree with the seal (``["fingerprint"]`` for caches made
    before per-field seals, where only the fingerprint can be compared). See kdcache/cache/_seal.py.
    """

    def __init__(self, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.fields = list(fields or [])


class CacheMetadataError(CacheError):
    """A metadata file of the cache (a ``zarr.json``) is missing, truncated or invalid, or an attribute
    does not parse. ``file`` is its path, ``problem`` what is wrong with it."""

    def __init__(self, message: str, file: str = "", problem: str = ""):
        super().__init__(message)
        self.file, self.problem = file, problem


class CacheBusyError(CacheError):
    """Another live process is writing the cache (its lock file names it)."""


class CacheIncompleteError(CacheError):
    """The cache lacks views a command needs (``done`` not set)."""


class CacheDamagedError(CacheError):
    """Stored chunks of the cache are missing, fail their checksum or hold NaN/Inf.

    ``damage`` lists every damaged chunk found (:class:`kdcache.cache._integrity.Damage`).
    """

    def __init__(self, message: str, damage: list | None = None):
        super().__init__(message)
        self.damage = list(damage or [])


class TeacherOutputError(CacheError, ArithmeticError):
    """The teacher produced NaN or Inf; nothing of the affected block was marked done."""
