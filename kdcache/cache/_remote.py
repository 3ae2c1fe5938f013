"""Caches behind fsspec URLs (``s3://``, ...): one-line errors for an unreachable endpoint or refused credentials.

Also the options a cache's store opens with (:func:`store_options`) and the bytes a cache takes, under a
folder or a URL (:func:`bytes_under`).

fsspec back ends raise their client library's exceptions (botocore's ``EndpointConnectionError``,
s3fs's ``PermissionError`` for ``InvalidAccessKeyId`` / ``SignatureDoesNotMatch``, aiohttp's
connection errors); :func:`storage_error` turns the ones a user can cause into a
:class:`~kdcache.errors.StorageError` that says what to check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kdcache.errors import KdcacheError, StorageError

__all__ = ["is_url", "store_options", "storage_error", "storage_errors", "bytes_under"]

def is_url(path: str) -> bool:
    """A cache path that is an fsspec URL (``s3://bucket/c.zarr``), not a local path."""
    return "://" in str(path)


def store_options(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fsspec options a cache's Zarr group opens with (None: a local path, or a URL given none).

    ``s3://`` gets ``max_concurrency=1`` unless given: s3fs otherwise asks each object's size (a HEAD) before
    reading it, to split objects over 50 MB, which no chunk is (two requests a chunk read instead of one).
    """
    if not is_url(path):
        return None
    if str(path).startswith(("s3://", "s3a://")):
        return {"max_concurrency": 1, **dict(storage_options or {})}
    return dict(storage_options) if storage_options else None


def bytes_under(path: str, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """Bytes of every file under ``path`` (a folder or an fsspec URL); None when the filesystem cannot tell."""
    if not is_url(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    try:
        import fsspec

        fs, p = fsspec.core.url_to_fs(str(path), **dict(storage_options or {}))
        return int(fs.du(p))
    except Exception:  # noqa: BLE001 - size is informational; some filesystems cannot report it
        return None


_CONNECT_NAMES = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError",
                  "ServerDisconnectedError", "ReadTimeoutError")
_AUTH_WORDS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "ExpiredToken",
               "InvalidToken", "NoCredentialsError", "Unable to locate credentials")


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _endpoint(storage_options: Mapping[str, Any] | None) -> str:
    so = dict(storage_options or {})
    ep = so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")
    return f"endpoint {ep}" if ep else "the default endpoint"


def storage_error(path: str, e: BaseException, storage_options: Mapping[str, Any] | None = None
                  ) -> StorageError | None:
    """A :class:`StorageError` for ``e`` raised while reaching ``path``, or None when ``e`` is something else."""
    for x in _chain(e):
        name, text = type(x).__name__, str(x)
        if isinstance(x, PermissionError) or any(w in name or w in text for w in _AUTH_WORDS):
            first = text.strip().splitlines()[0] if text.strip() else name
            return StorageError(f"{path}: access refused by {_endpoint(storage_options)} ({first[:160]}); check "
                                "the credentials (--storage-option key=... secret=..., or AWS_ACCESS_KEY_ID / "
                                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE) and the bucket's permissions")
        if name in _CONNECT_NAMES or (isinstance(x, (ConnectionError, TimeoutError)) and "connect" in text.lower()):
            return StorageError(f"{path}: cannot connect to {_endpoint(storage_options)} ({name}); check "
                                "--storage-option endpoint_url=... and that the server is running and reachable")
    return None


@contextmanager
def storage_errors(path: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Turn an fsspec back end's endpoint and credential errors raised in the body into a :class:`StorageError`
    (for URLs; kdcache's own errors and anything else pass through)."""
    try:
        yield
    except KdcacheError:
        raise
    except Exception as e:  # noqa: BLE001 - the back end's client errors have no common base
        err = storage_error(path, e, storage_options) if "://" in str(path) else None
        if err is None:
            raise
        raise err from e
