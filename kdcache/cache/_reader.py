"""Reading units of a cache: one chunk read per (block, view) and array, in bulk; chunks are fetched (one GET
each on a remote store, its existence check) and decoded here through the arrays' own codecs, without zarr's
event loop (``UnitReader``, a part of :class:`~kdcache.cache._store.CacheStore`)."""

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
from kdcache.errors import CacheError

__all__ = ["UnitReader"]

_PROTOTYPE = default_buffer_prototype()


class UnitReader(ChunkAccess):
    """Bulk reads of units and whole arrays; needs ``view_array_names``, ``num_samples`` and ``_chunk_specs``
    besides what :class:`ChunkAccess` needs."""

    def read_unit(self, block: int, view: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One unit's per-view arrays; a missing or corrupt chunk raises :class:`CacheDamagedError`."""
        return self.read_units([(block, view)], names)[int(block), int(view)]

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

        Reading a chunk is its existence check (a remote store gets one GET a chunk, no HEAD before it): a
        missing chunk is damage, never the fill value, and every missing one of the read is named; a chunk
        whose bytes fail their checksum raises :class:`CacheDamagedError`.
        """
        names = list(names or self.view_array_names)
        units = [(int(b), int(v)) for b, v in units]
        wanted = [(n, self.unit_chunk(n, b, v)) for b, v in units for n in names]
        arrays = {n: self.array(n) for n in names}
        # a remote store's chunks all at once; a local store's one at a time, each decoded before the next is
        # read (a window's compressed bytes are never all held beside its decoded arrays)
        raws = self._fetch(wanted) if self._local_root() is None else None
        if raws is not None and self.checksums and any(r is None for r in raws):
            self._raise_missing([w for w, r in zip(wanted, raws) if r is None])
        out: dict[tuple[int, int], dict[str, np.ndarray]] = {u: {} for u in units}
        for i, (n, c) in enumerate(wanted):
            raw = raws[i] if raws is not None else self._fetch([(n, c)])[0]
            if raw is None and self.checksums:  # every missing chunk of the read named, not just this one
                self._raise_missing(self._missing_keys(wanted))
            # no bytes: the fill value of a cache made before checksums; a failed request: zarr's own read,
            # which raises the store's error (or finds the bytes bad)
            out[c[0], c[1]][n] = (self._decode(arrays[n], n, c) if raw is None or isinstance(raw, BaseException)
                                  else self._decode_raw(arrays[n], n, c, raw))
        return out

    def _raise_missing(self, missing: Sequence[tuple[str, tuple[int, ...]]]) -> None:
        raise damage_error(self.path, [self.chunk_damage(n, c, "missing") for n, c in missing])

    def _local_root(self) -> str | None:
        store = self._g.store_path.store
        return str(store.root) if isinstance(store, zarr.storage.LocalStore) else None

    def _fetch(self, chunks: Sequence[tuple[str, tuple[int, ...]]]) -> list[Any]:
        """The stored bytes of these chunks, a buffer each, None for one that is not there. A local store's
        files are read in this thread, without a trip through zarr's event loop (about a millisecond a chunk;
        reads of small chunks are all overhead otherwise); a remote store's objects are all requested at once,
        and a request that failed comes back as its exception."""
        root = self._local_root()
        if root is None:
            store = self._g.store_path.store
            return sync(_gather([store.get(self.chunk_key(n, c), prototype=_PROTOTYPE) for n, c in chunks]))
        out: list[Any] = []
        for n, c in chunks:
            try:
                with open(os.path.join(root, self.chunk_key(n, c)), "rb") as f:
                    out.append(_PROTOTYPE.buffer.from_bytes(f.read()))
            except FileNotFoundError:
                out.append(None)
        return out

    def _decode_raw(self, arr: zarr.Array, name: str, coords: tuple[int, ...], buf: Any) -> np.ndarray:
        """One chunk's stored bytes through the array's codecs (zarr's synchronous codec methods)."""
        aa = arr.async_array
        try:
            spec = self._chunk_specs.get(name)
            if spec is None:  # a regular grid: every chunk (edge ones too) is stored at the full chunk shape
                spec = self._chunk_specs[name] = aa.metadata.get_chunk_spec(coords, aa.config, prototype=_PROTOTYPE)
            to_bytes, *from_bytes = aa.metadata.codecs
            if not isinstance(to_bytes, ArrayBytesCodec) or not all(isinstance(c, BytesBytesCodec)
                                                                    for c in from_bytes):
                return self._decode(arr, name, coords)  # other codec chains: zarr's own path
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
            self._raise_missing(missing)
        if self._local_root() is not None and arr.ndim >= 2 and check_missing:
            # per-view arrays and `done` (chunks of one block and one view) of a local store, chunk by chunk
            out = np.empty(arr.shape, dtype=arr.dtype)
            for c in grid:
                raw = self._fetch([(name, c)])[0]
                if raw is None:  # deleted since the check above
                    self._raise_missing([(name, c)])
                b0, b1 = self.block_bounds(c[0])
                out[b0:b1, c[1]] = self._decode_raw(arr, name, c, raw)
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
