"""Chunk geometry, existence and damage: which chunk holds a unit, where it lives, whether it is there and
whether its bytes decode (``ChunkAccess``, a part of :class:`~kdcache.cache._store.CacheStore`).

A missing chunk of a checksummed cache is damage, never the fill value; a chunk whose bytes fail their CRC32C
or do not decode is named with its array, unit (block, view), sample rows and path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from kdcache.cache._damage import Damage, damage_error
from kdcache.cache._remote import is_url
from kdcache.errors import CacheDamagedError

__all__ = ["ChunkAccess"]


class ChunkAccess:
    """Chunk-level access of a store: needs ``path``, ``_g`` (the group), ``checksums``, ``array(name)``,
    ``num_blocks`` and ``block_bounds(block)`` from the class it is part of."""

    def locate_damage(self, name: str, coords: Iterable[tuple[int, ...]]) -> list[Damage]:
        """Decode these chunks one by one (after a multi-chunk read failed) and return the bad ones."""
        damage: list[Damage] = []
        arr = self.array(name)
        for c in coords:
            try:
                self._decode(arr, name, c)
            except CacheDamagedError as e:
                damage.extend(e.damage)
        return damage

    # ------------------------------------------------------------------ chunks (integrity)
    def unit_chunk(self, name: str, block: int, view: int) -> tuple[int, ...]:
        """Chunk coordinates of unit (block, view) in a per-view array (or ``done``)."""
        return (int(block), int(view), *(0,) * (len(self.array(name).shape) - 2))

    def chunk_grid(self, name: str) -> list[tuple[int, ...]]:
        """Coordinates of every chunk of ``name`` (per-view arrays: unit by unit)."""
        arr = self.array(name)
        if arr.ndim == 1:
            return [(c,) for c in range(-(-arr.shape[0] // arr.chunks[0]))]
        return [self.unit_chunk(name, b, v) for v in range(arr.shape[1]) for b in range(self.num_blocks)]

    def chunk_key(self, name: str, coords: tuple[int, ...]) -> str:
        """The chunk's key in the store (e.g. ``logits/c/3/1/0``)."""
        arr = self.array(name)
        return f"{arr.store_path.path}/{arr.metadata.encode_chunk_key(tuple(coords))}"

    def chunk_location(self, name: str, coords: tuple[int, ...]) -> str:
        """The chunk's path (file path for local caches, URL otherwise)."""
        key = self.chunk_key(name, coords)[len(self._g.store_path.path):].lstrip("/")
        return f"{self.path.rstrip('/')}/{key}" if is_url(self.path) else os.path.join(self.path, key)

    def chunk_damage(self, name: str, coords: tuple[int, ...], problem: str, detail: str = "") -> Damage:
        """A :class:`Damage` naming the chunk's unit (per-view arrays) or sample rows, and its path."""
        arr = self.array(name)
        if arr.ndim == 1:
            c0 = coords[0] * arr.chunks[0]
            return Damage(array=name, problem=problem, location=self.chunk_location(name, coords),
                          samples=(c0, min(c0 + arr.chunks[0], arr.shape[0])), detail=detail)
        return Damage(array=name, problem=problem, location=self.chunk_location(name, coords),
                      block=int(coords[0]), view=int(coords[1]), samples=self.block_bounds(int(coords[0])),
                      detail=detail)

    def read_chunk(self, name: str, coords: tuple[int, ...]) -> np.ndarray:
        """One chunk's values (per-view arrays: without the view axis), its bytes checked; the caller has
        checked that it exists (zarr reads a missing chunk as the fill value)."""
        return self._decode(self.array(name), name, coords)

    def missing_chunks(self, name: str, coords: Sequence[tuple[int, ...]], *, listing: bool = False
                       ) -> list[tuple[int, ...]]:
        """Which of these chunks do not exist (always none for caches made without checksums).

        ``listing`` lists the array's keys once instead of asking per chunk (for whole-array scans of
        remote stores; a local stat per chunk is cheaper than walking the directory tree).
        """
        if not self.checksums or not coords:
            return []
        if not listing or isinstance(self._g.store_path.store, zarr.storage.LocalStore):
            return [c for _, c in self._missing_keys([(name, c) for c in coords])]
        arr = self.array(name)
        prefix = f"{arr.store_path.path}/"
        present = set(sync(_collect(arr.store_path.store.list_prefix(prefix))))
        _forget_listings(arr.store_path.store)
        return [c for c in coords if self.chunk_key(name, c) not in present]

    def _missing_keys(self, chunks: Sequence[tuple[str, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
        """(array, coords) pairs whose chunk does not exist; one batched round of ``exists`` calls."""
        if not self.checksums or not chunks:
            return []
        store = self._g.store_path.store
        keys = [self.chunk_key(n, c) for n, c in chunks]
        if isinstance(store, zarr.storage.LocalStore):
            # A stat per chunk in this thread: far cheaper than a trip through zarr's event loop each.
            root = str(store.root)
            found = [os.path.isfile(os.path.join(root, k)) for k in keys]
        else:
            found = sync(_exist(store, keys))  # remote stores: all requests in flight at once
        return [nc for nc, ok in zip(chunks, found) if not ok]

    def _chunk_selection(self, arr: zarr.Array, coords: tuple[int, ...]) -> tuple[Any, ...]:
        if arr.ndim == 1:
            c0 = coords[0] * arr.chunks[0]
            return (slice(c0, min(c0 + arr.chunks[0], arr.shape[0])),)
        b0, b1 = self.block_bounds(coords[0])
        return (slice(b0, b1), coords[1])

    def _decode(self, arr: zarr.Array, name: str, coords: tuple[int, ...]) -> np.ndarray:
        """Read one chunk; bytes that fail their checksum or do not decode raise :class:`CacheDamagedError`."""
        sel = self._chunk_selection(arr, coords)
        try:
            return np.asarray(arr[sel])
        except Exception as e:  # noqa: BLE001 - whatever the codecs raise, the stored bytes are bad
            raise self._corrupt(name, coords, e) from e

    def _corrupt(self, name: str, coords: tuple[int, ...], e: Exception) -> CacheDamagedError:
        msg = str(e)
        detail = ("checksum mismatch: truncated or overwritten" if "checksum" in msg.lower()
                  else f"cannot be decoded: {type(e).__name__}: {msg[:120]}")
        return damage_error(self.path, [self.chunk_damage(name, coords, "corrupt", detail)])


def _forget_listings(store) -> None:
    """Drop what a recursive listing left in an fsspec filesystem's directory cache. s3fs keeps the listed
    folders and answers later lookups from them, so a chunk another process writes afterwards would read as
    absent in this process (a reader polling a growing cache saw its new views as never done)."""
    fs = getattr(store, "fs", None)
    if fs is not None and hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()


async def _collect(it) -> list[str]:
    return [k async for k in it]


async def _exist(store, keys: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(store.exists(k) for k in keys)))
