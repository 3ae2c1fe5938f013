"""Reading units of a cache: one chunk read per (block, view) and array, in bulk; a local store's chunks are
decoded here through the arrays' own codecs, without zarr's event loop (``UnitReader``, a part of
:class:`~kdcache.cache._store.CacheStore`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from kdcache.cache._chunks import ChunkAccess
from kdcache.cache._damage import damage_error
from kdcache.errors import CacheDamagedError, CacheError

__all__ = ["UnitReader"]

_PROTOTYPE = default_buffer_prototype()


class UnitReader(ChunkAccess):
    """Bulk reads of units and whole arrays; needs ``view_array_names``, ``num_samples`` and ``_chunk_specs``
    besides what :class:`ChunkAccess` needs."""

    def read_unit(self, block: int, view: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One unit's per-view arrays; a missing or corrupt chunk raises :class:`CacheDamagedError`."""
        names = list(names or self.view_array_names)
        coords = {n: self.unit_chunk(n, block, view) for n in names}
        missing = self._missing_keys([(n, c) for n, c in coords.items()])
        if missing:
            raise damage_error(self.path, [self.chunk_damage(n, c, "missing") for n, c in missing])
        return {n: self.read_chunk(n, c, check_exists=False) for n, c in coords.items()}

    def read_views(self, views_per_block: Sequence[int], names: Iterable[str] | None = None, *,
                   blocks: Iterable[int] | None = None) -> dict[str, np.ndarray]:
        """Gather, for every sample, the arrays of the view chosen for its block.

        One chunk-aligned read per block and array: the access pattern the chunking is made for.
        ``blocks`` reads only those blocks (a rank's share of an epoch); the other samples' rows of
        the returned (num_samples, ...) arrays are left unset. Choose done units: in a checksummed
        cache a unit never written has no chunks, and reading it raises :class:`CacheDamagedError`
        like a deleted one (never the fill value).
        """
        names = list(names or self.view_array_names)
        if len(views_per_block) != self.num_blocks:
            raise CacheError(f"need one view per block ({self.num_blocks}), got {len(views_per_block)}")
        wanted = range(self.num_blocks) if blocks is None else sorted({int(b) for b in blocks})
        units = self.read_units([(b, int(views_per_block[b])) for b in wanted], names)
        out: dict[str, np.ndarray] = {}
        for name in names:
            arr = self.array(name)
            buf = np.empty((self.num_samples, *arr.shape[2:]), dtype=arr.dtype)
            for b in wanted:
                b0, b1 = self.block_bounds(b)
                buf[b0:b1] = units[b, int(views_per_block[b])][name]
            out[name] = buf
        return out

    def read_units(self, units: Sequence[tuple[int, int]], names: Iterable[str] | None = None
                   ) -> dict[tuple[int, int], dict[str, np.ndarray]]:
        """The arrays of these (block, view) units: one chunk read each (remote stores: all in flight at once).

        Existence is checked for all of them at once first (a missing chunk is damage, never the
        fill value); a chunk whose bytes fail their checksum raises :class:`CacheDamagedError`.
        """
        names = list(names or self.view_array_names)
        units = [(int(b), int(v)) for b, v in units]
        wanted = [(n, self.unit_chunk(n, b, v)) for b, v in units for n in names]
        arrays = {n: self.array(n) for n in names}
        out: dict[tuple[int, int], dict[str, np.ndarray]] = {u: {} for u in units}
        root = self._local_root()
        if root is not None:
            # A local store: each chunk file read and decoded here by the array's own codecs, without a
            # trip through zarr's event loop (about a millisecond a chunk; reads of small chunks are all
            # overhead otherwise). Opening the file is the existence check; at the first missing chunk,
            # every missing one of the read is named.
            try:
                for n, c in wanted:
                    out[c[0], c[1]][n] = self._decode_local(root, arrays[n], n, c)
            except CacheDamagedError:
                missing = self._missing_keys(wanted)
                if missing:
                    raise damage_error(self.path, [self.chunk_damage(n, c, "missing") for n, c in missing]) from None
                raise
            return out
        missing = self._missing_keys(wanted)
        if missing:
            raise damage_error(self.path, [self.chunk_damage(n, c, "missing") for n, c in missing])
        # Other stores: all chunks in one trip through zarr's event loop, requests in flight at once.
        results = sync(_gather([arrays[n].async_array.getitem(self._chunk_selection(arrays[n], c))
                                for n, c in wanted]))
        for (n, c), a in zip(wanted, results):
            out[c[0], c[1]][n] = np.asarray(a) if not isinstance(a, BaseException) else self._decode(arrays[n], n, c)
        return out

    def _local_root(self) -> str | None:
        store = self._g.store_path.store
        return str(store.root) if isinstance(store, zarr.storage.LocalStore) else None

    def _decode_local(self, root: str, arr: zarr.Array, name: str, coords: tuple[int, ...]) -> np.ndarray:
        """One chunk of a local store through the array's codecs (zarr's synchronous codec methods)."""
        path = os.path.join(root, self.chunk_key(name, coords))
        aa = arr.async_array
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            if not self.checksums:  # a cache made before checksums: an unwritten chunk is its fill value
                return self._decode(arr, name, coords)
            raise damage_error(self.path, [self.chunk_damage(name, coords, "missing")]) from None
        try:
            spec = self._chunk_specs.get(name)
            if spec is None:  # a regular grid: every chunk (edge ones too) is stored at the full chunk shape
                spec = self._chunk_specs[name] = aa.metadata.get_chunk_spec(coords, aa.config, prototype=_PROTOTYPE)
            to_bytes, *from_bytes = aa.metadata.codecs
            if not isinstance(to_bytes, ArrayBytesCodec) or not all(isinstance(c, BytesBytesCodec)
                                                                    for c in from_bytes):
                return self._decode(arr, name, coords)  # other codec chains: zarr's own path
            buf = _PROTOTYPE.buffer.from_bytes(raw)
            for codec in reversed(from_bytes):
                buf = codec._decode_sync(buf, spec)
            chunk = to_bytes._decode_sync(buf, spec).as_numpy_array()
        except (AttributeError, NotImplementedError):  # a codec without a synchronous decoder
            return self._decode(arr, name, coords)
        except Exception as e:  # noqa: BLE001 - whatever the codecs raise, the stored bytes are bad
            raise self._corrupt(name, coords, e) from e
        if arr.ndim == 1:
            c0 = coords[0] * arr.chunks[0]
            return chunk[:min(c0 + arr.chunks[0], arr.shape[0]) - c0]
        b0, b1 = self.block_bounds(coords[0])
        return chunk[:b1 - b0, 0]

    def read_array(self, name: str, *, check_missing: bool = True) -> np.ndarray:
        """A whole array, checked: a missing or corrupt chunk raises :class:`CacheDamagedError`.

        For ``done`` and the per-sample arrays, whose chunks always exist, and small per-view arrays
        (``check_missing=False``: units not done may lack chunks; the caller checks done units).
        """
        arr = self.array(name)
        grid = self.chunk_grid(name)
        missing = self._missing_keys([(name, c) for c in grid]) if check_missing else []
        if missing:
            raise damage_error(self.path, [self.chunk_damage(n, c, "missing") for n, c in missing])
        root = self._local_root()
        if root is not None and arr.ndim >= 2 and check_missing:
            # per-view arrays and `done` (chunks of one block and one view) of a local store, chunk by chunk
            out = np.empty(arr.shape, dtype=arr.dtype)
            for c in grid:
                b0, b1 = self.block_bounds(c[0])
                out[b0:b1, c[1]] = self._decode_local(root, arr, name, c)
            return out
        try:
            return np.asarray(arr[...])
        except Exception:  # noqa: BLE001 - some chunk's bytes do not decode; find which ones
            damage = self.locate_damage(name, grid)
            if not damage:
                raise
            raise damage_error(self.path, damage) from None


async def _gather(coros) -> list[Any]:
    return list(await asyncio.gather(*coros, return_exceptions=True))
