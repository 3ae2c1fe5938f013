"""The teacher cache: a versioned Zarr v3 group (format in docs/cache-format.md).

Layout: per-sample arrays ``sample_key`` (N,) and ``label`` (N,); per-view arrays of
shape (N, V, ...) — targets (``logits`` or ``topk_values``/``topk_indices``, and
``argmax``), the view's recorded augmentation parameters (``crop``, ``flip``, mixing
arrays; format 1 also ``view_seed``) — and the completion mask ``done`` (N, V).

Every per-view array is chunked (B, 1, ...): one *unit* of work is a block of B
samples times one view, and it owns exactly one chunk of every per-view array.
That gives the properties the dump engine and the readers rely on:

* one view's targets for a block are contiguous (one chunk read per block per epoch);
* different units never share a chunk, so several processes can write disjoint
  units concurrently (zarr supports concurrent writes to different chunks);
* ``done[block, v]`` is written only after the unit's data, so a crash leaves the unit
  not-done and a rerun recomputes it; chunk existence is never used as a marker.

Metadata (creating arrays, resizing for added views, attributes) is changed by one
process only; creation marks the group ``ready`` last, so an interrupted creation is
detected and redone.

Here: opening, creating, writing. Reading units: ``_reader``; chunks and damage: ``_chunks``; codecs: ``_codecs``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from kdcache.cache import _codecs
from kdcache.cache._codecs import array_recipes
from kdcache.cache._damage import damage_error
from kdcache.cache._identity import CacheIdentity, dataset_differences
from kdcache.cache._layout import UnitLayout
from kdcache.cache._metadata import check_group_metadata, metadata_attr, metadata_error, metadata_problem
from kdcache.cache._reader import UnitReader
from kdcache.cache._remote import bytes_under, is_url, storage_error, store_options
from kdcache.cache._seal import SEAL_ATTR, check_seal, make_seal, seal_copy, stored_copy
from kdcache.cache._targets import TargetMode
from kdcache.errors import (
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheNotFoundError,
    KdcacheError,
)

__all__ = ["CacheStore", "FORMAT_VERSION", "DEFAULT_BLOCK_SIZE", "is_url", "array_recipes", "format_of"]

# The formats and what each added: docs/cache-format.md, "Version history"; every earlier one stays readable.
FORMAT_VERSION = 5


def format_of(mode: TargetMode) -> int:
    """The format a new cache of these targets is written in: the oldest that describes it (4 with an embedding,
    else 3), so a cache without embeddings stays readable by a kdcache that knows format 3."""
    return 4 if mode.embedding else 3


DEFAULT_BLOCK_SIZE = 1024


def _open_group(path: str, mode: str, storage_options: Mapping[str, Any] | None,
                attributes: Mapping[str, Any] | None = None) -> zarr.Group:
    kw: dict[str, Any] = {}
    if (options := store_options(path, storage_options)) is not None:
        kw["storage_options"] = options
    if attributes is not None:
        kw["attributes"] = dict(attributes)
    return zarr.open_group(str(path), mode=mode, **kw)


class CacheStore(UnitReader):
    """A handle on one cache. Use :meth:`create` or :meth:`open`; never construct directly."""

    def __init__(self, group: zarr.Group, path: str, *, writable: bool,
                 storage_options: Mapping[str, Any] | None = None):
        self._g = group
        self.path = str(path)
        self._storage_options = dict(storage_options) if storage_options and is_url(path) else None
        self.storage_options = dict(storage_options or {})  # for size queries through fsspec
        self.writable = writable
        attrs = dict(group.attrs)
        self.attrs: dict[str, Any] = attrs
        try:
            identity: CacheIdentity | None = CacheIdentity.from_dict(attrs["identity"])
        except (KeyError, TypeError, ValueError, AttributeError):
            identity = None  # named below, unless the seal names the edit first
        check_seal(self.path, attrs, identity, stored_copy(group))  # nothing read from an edited description
        self.identity = metadata_attr(self.path, attrs, "identity", lambda _v: identity if identity is not None else
                              CacheIdentity.from_dict(_v))
        self.target_mode = metadata_attr(self.path, attrs, "targets", TargetMode.parse)
        self.num_samples = metadata_attr(self.path, attrs, "num_samples", int)
        self.num_classes = metadata_attr(self.path, attrs, "num_classes", int)
        self.block_size = metadata_attr(self.path, attrs, "block_size", int)
        self.view_array_names: list[str] = metadata_attr(self.path, attrs, "view_arrays", lambda v: [str(n) for n in v])
        self._layout: UnitLayout | None = None
        # Caches made with checksums write every chunk: a missing chunk is damage (integrity.py).
        self.checksums = bool(attrs.get("checksums", False))
        self._arrays: dict[str, zarr.Array] = {}  # opening an array reads its metadata: once per handle
        self._chunk_specs: dict[str, Any] = {}  # an array's chunk spec (one for all chunks of its regular grid)
        # The view count is read from the arrays (the authority) so a handle opened while
        # another process adds views sees a consistent snapshot.
        self.num_views = int(self.array("done").shape[1])
        for name in ("sample_key", "label", *self.view_array_names):
            self.array(name)  # every array's metadata is read (and a damaged zarr.json named) at open

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str,
        *,
        identity: CacheIdentity,
        keys: Sequence[str],
        labels: np.ndarray,
        num_classes: int,
        num_views: int,
        layout: UnitLayout,
        attrs: Mapping[str, Any],
        block_size: int = DEFAULT_BLOCK_SIZE,
        storage_options: Mapping[str, Any] | None = None,
    ) -> "CacheStore":
        """Create a new cache (overwriting whatever is at ``path``: callers check first)."""
        n = len(keys)
        if n == 0:
            raise CacheError("cannot create a cache for an empty dataset")
        if num_views < 1:
            raise CacheError(f"num_views must be >= 1, got {num_views}")
        mode = TargetMode.parse(identity.targets)
        if layout.mode != mode:
            raise CacheError(f"unit layout is for targets {layout.mode}, the identity says {mode}")
        final = cls.new_attributes(identity=identity, num_samples=n, num_classes=num_classes, num_views=num_views,
                                   layout=layout, attrs=attrs, block_size=block_size)
        # The group is born with its identity in one metadata write (zarr's attrs.update() rewrites
        # zarr.json once per key) and `ready` is set last: an interrupted creation is always
        # recognisable as ours and redone by the same command.
        g = _open_group(path, "w", storage_options, attributes={
            "kdcache_format": format_of(mode), "ready": False, "fingerprint": identity.fingerprint,
            "identity": identity.to_dict()})
        made = {name: g.create_array(name, **kw)  # the returned arrays carry the write-every-chunk config
                for name, kw in array_recipes(n, num_views, layout, final["block_size"], seal_copy(final)).items()}
        made["sample_key"][:] = np.asarray(list(keys), dtype=str)
        made["label"][:] = np.asarray(labels, dtype=np.int32)
        made["done"][:] = False  # every done chunk exists from the start: a missing one is damage
        g.attrs.put(final)
        return cls(g, path, writable=True, storage_options=storage_options)

    @staticmethod
    def new_attributes(*, identity: CacheIdentity, num_samples: int, num_classes: int, num_views: int,
                       layout: UnitLayout, attrs: Mapping[str, Any], block_size: int) -> dict[str, Any]:
        """The group attributes :meth:`create` writes (``ready`` true, sealed): also what a dump rerun
        compares with the seal to restore edited or lost attributes."""
        out = {"kdcache_format": format_of(TargetMode.parse(identity.targets)), "ready": True,
               "fingerprint": identity.fingerprint,
               "identity": identity.to_dict(), **dict(attrs),
               "checksums": True, "num_samples": int(num_samples), "num_views": int(num_views),
               "num_classes": int(num_classes), "targets": str(TargetMode.parse(identity.targets)),
               "block_size": max(1, min(int(block_size), int(num_samples))), "view_arrays": layout.names}
        out[SEAL_ATTR] = make_seal(out)
        return out

    @classmethod
    def open(cls, path: str, *, mode: str = "r", storage_options: Mapping[str, Any] | None = None
             ) -> "CacheStore":
        """Open an existing cache read-only (``mode="r"``) or for writing (``"r+"``)."""
        if mode not in ("r", "r+"):
            raise CacheError(f"invalid open mode {mode!r}")
        if not is_url(path) and not os.path.exists(path):
            raise CacheNotFoundError(f"cache not found: {path}")
        try:
            check_group_metadata(path, storage_options)
            g = _open_group(path, mode, storage_options)
        except KdcacheError:
            raise
        except (FileNotFoundError, zarr.errors.NodeNotFoundError) as e:
            raise CacheNotFoundError(f"cache not found: {path}") from e
        except (ValueError, zarr.errors.BaseZarrError) as e:
            raise CacheNotFoundError(f"{path} is not a Zarr group ({e})") from e
        except Exception as e:  # noqa: BLE001 - an fsspec back end's client errors (endpoint, credentials)
            err = storage_error(path, e, storage_options) if is_url(path) else None
            if err is None:
                raise
            raise err from e
        attrs = dict(g.attrs)
        if "kdcache_format" not in attrs:
            raise CacheNotFoundError(f"{path} is a Zarr group but not a kdcache cache (no 'kdcache_format')")
        if int(attrs["kdcache_format"]) > FORMAT_VERSION:
            raise CacheError(f"{path} has cache format {attrs['kdcache_format']}, newer than this kdcache "
                             f"supports ({FORMAT_VERSION}); upgrade kdcache")
        if not attrs.get("ready"):
            raise CacheIncompleteError(f"{path}: cache creation was interrupted; rerun dump-teacher to recreate it")
        return cls(g, path, writable=(mode == "r+"), storage_options=storage_options)

    @staticmethod
    def peek_attrs(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Attributes of the group at ``path``, or None when nothing is there."""
        if not is_url(path) and not os.path.exists(path):
            return None
        try:
            return dict(_open_group(path, "r", storage_options).attrs)
        except (FileNotFoundError, zarr.errors.NodeNotFoundError):
            # Nothing Zarr is there. An empty directory may be used; anything else is the user's.
            if not is_url(path) and (not os.path.isdir(path) or os.listdir(path)):
                raise CacheError(f"{path} exists and is not a kdcache cache; refusing to overwrite it "
                                 "(choose another `out`)") from None
            return None
        except (ValueError, zarr.errors.BaseZarrError) as e:
            raise CacheError(f"{path} exists but is not a Zarr group ({e}); refusing to touch it") from e
        except Exception as e:  # noqa: BLE001 - an fsspec back end's client errors (endpoint, credentials)
            err = storage_error(path, e, storage_options) if is_url(path) else None
            if err is None:
                raise
            raise err from e

    def check_dataset(self, ds) -> None:
        """Refuse a dataset other than the one the cache was made from (or another split / subset)."""
        diffs = dataset_differences(self.identity.dataset, ds, self.attrs)
        if diffs:
            raise CacheMismatchError(f"{self.path} was made from other data: " + "; ".join(diffs))

    def check_identity(self, expected: CacheIdentity) -> None:
        """Raise :class:`CacheMismatchError` naming each differing part."""
        diffs = expected.differences(self.identity)
        if diffs:
            raise CacheMismatchError(
                f"{self.path} was made with a different configuration (requested != cached): " + "; ".join(diffs))

    @property
    def layout(self) -> UnitLayout:
        """Which per-view arrays make a unit (read from the arrays themselves on first use)."""
        if self._layout is None:
            self._layout = UnitLayout.of_arrays(self.target_mode, {n: self.array(n) for n in self.view_array_names})
        return self._layout

    # ------------------------------------------------------------------ geometry
    @property
    def num_blocks(self) -> int:
        return -(-self.num_samples // self.block_size)

    def block_bounds(self, block: int) -> tuple[int, int]:
        b0 = block * self.block_size
        return b0, min(b0 + self.block_size, self.num_samples)

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                self._arrays[name] = self._g[name]
            except Exception as e:  # noqa: BLE001 - zarr raises JSONDecodeError, KeyError, ...: name the file
                problem = metadata_problem(self.path, name, node="array", storage_options=self._storage_options)
                raise metadata_error(self.path, name, problem or f"cannot be read ({type(e).__name__}: "
                                     f"{str(e)[:120]})") from None
        return self._arrays[name]

    def _writable_array(self, name: str) -> zarr.Array:
        return self.array(name).with_config(_codecs.WRITE_ALL)

    def arrays(self) -> dict[str, zarr.Array]:
        """Every array of the group by name (sorted), for tools that copy the whole store."""
        try:
            listed = list(self._g.array_keys())
        except Exception:  # noqa: BLE001 - a child's bad zarr.json: the known arrays are named one by one below
            listed = []
        names = sorted({"sample_key", "label", "done", *self.view_array_names, *listed})
        return {n: self.array(n) for n in names}

    @property
    def keys(self) -> list[str]:
        return [str(k) for k in self.read_array("sample_key")]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.read_array("label"), dtype=np.int64)

    # ------------------------------------------------------------------ completion
    def done(self) -> np.ndarray:
        """The (N, V) completion mask (a missing or corrupt ``done`` chunk raises :class:`CacheDamagedError`)."""
        # Views being added may lack done chunks for a moment (see settled_views): they read as not done. A
        # remote store lists done/ once, not a request per block and view.
        missing = self.missing_chunks("done", [c for c in self.chunk_grid("done") if c[1] < self.settled_views],
                                      listing=True)
        if missing:
            raise damage_error(self.path, [self.chunk_damage("done", c, "missing") for c in missing])
        return np.asarray(self.read_array("done", check_missing=False)[:, : self.num_views], dtype=bool)

    @property
    def settled_views(self) -> int:
        """Views whose ``done`` chunks all exist: ``add_views`` resizes the arrays, writes the new views'
        done chunks, and only then records the new count (the ``num_views`` attribute), so a reader
        opened in between sees more views than are settled; those read as not done, never as damage."""
        return min(self.num_views, int(self.attrs.get("num_views", self.num_views)))

    def done_units(self) -> np.ndarray:
        """(num_blocks, V) bool: unit (block, view) complete. A unit is done only as a whole."""
        d = self.done()
        starts = np.arange(0, self.num_samples, self.block_size)
        return np.logical_and.reduceat(d, starts, axis=0)

    def pending_units(self) -> list[tuple[int, int]]:
        """Units not yet done, view-major (all blocks of view 0 first)."""
        du = self.done_units()
        return [(b, v) for v in range(self.num_views) for b in range(self.num_blocks) if not du[b, v]]

    # ------------------------------------------------------------------ writing
    def write_unit(self, block: int, view: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one unit's per-view arrays, then mark it done. ``arrays`` must cover every view array."""
        if not self.writable:
            raise CacheError(f"{self.path} is open read-only")
        missing = set(self.view_array_names) - set(arrays)
        extra = set(arrays) - set(self.view_array_names)
        if missing or extra:
            raise CacheError(f"unit arrays mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
        b0, b1 = self.block_bounds(block)
        for name in self.view_array_names:
            arr = self._writable_array(name)
            value = np.asarray(arrays[name])
            if value.shape[0] != b1 - b0:
                raise CacheError(f"{name}: unit has {value.shape[0]} rows, block {block} has {b1 - b0}")
            _check_fits(name, value, arr.dtype)
            arr[b0:b1, view] = value.astype(arr.dtype, copy=False)
        self._writable_array("done")[b0:b1, view] = True

    def clear_units(self, units: Iterable[tuple[int, int]]) -> None:
        """Mark units not done (rewriting their ``done`` chunks whole), so a dump recomputes them."""
        if not self.writable:
            raise CacheError(f"{self.path} is open read-only")
        done = self._writable_array("done")
        for block, view in units:
            b0, b1 = self.block_bounds(block)
            done[b0:b1, view] = False

    def rewrite_samples(self, keys: Sequence[str], labels: np.ndarray) -> None:
        """Rewrite the per-sample arrays (``sample_key``, ``label``) from the dataset."""
        if not self.writable:
            raise CacheError(f"{self.path} is open read-only")
        if len(keys) != self.num_samples:
            raise CacheError(f"expected {self.num_samples} sample keys, got {len(keys)}")
        self._writable_array("sample_key")[:] = np.asarray(list(keys), dtype=str)
        self._writable_array("label")[:] = np.asarray(labels, dtype=np.int32)

    def add_views(self, count: int) -> int:
        """Grow every per-view array by ``count`` views (metadata only; one process). Returns the new V."""
        if not self.writable:
            raise CacheError(f"{self.path} is open read-only")
        if count < 1:
            raise CacheError(f"`add_views` must be >= 1, got {count}")
        new_v = self.num_views + int(count)
        # Recorded first, so a rerun of an interrupted addition resumes it (see engine.dump).
        self._g.attrs["last_add"] = {"from": self.num_views, "to": new_v}
        old_v = self.num_views
        for name in [*self.view_array_names, "done"]:
            arr = self.array(name)
            arr.resize((arr.shape[0], new_v, *arr.shape[2:]))
        self._arrays.clear()  # reopen with the new shapes
        self._chunk_specs.clear()
        if self.checksums:  # the new views' done chunks exist from the start, like at creation
            self._writable_array("done")[:, old_v:new_v] = False
        self._g.attrs["num_views"] = new_v
        self.num_views = new_v
        return new_v

    def nbytes_on_disk(self) -> int | None:
        """Bytes the store takes on its filesystem (None when the store cannot tell)."""
        return bytes_under(self.path, self.storage_options)


def _check_fits(name: str, value: np.ndarray, dtype: np.dtype) -> None:
    """Refuse silent wrap-around when narrowing integers (e.g. crop boxes stored as int16)."""
    if np.issubdtype(dtype, np.integer) and value.size and np.issubdtype(value.dtype, np.integer):
        info = np.iinfo(dtype)
        if value.min() < info.min or value.max() > info.max:
            raise CacheError(f"{name}: values [{value.min()}, {value.max()}] do not fit the cache's {dtype}")
