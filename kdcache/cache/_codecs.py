"""How a new cache's arrays are stored: their codecs (chosen by measurement, each chunk checksummed) and shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from kdcache.cache._layout import UnitLayout
from kdcache.cache._seal import SEAL_COPY_ATTR

__all__ = ["WRITE_ALL", "array_recipes"]

# Chosen by measurement (bench/storage.py's codec table). Blosc(zstd) with byte shuffle: float16 logits
# compress best when their high and low bytes are grouped (level 5: level 9 saves under 1% and encodes 20x
# slower). Multi-byte integers spread over their low bits (class indices, crop boxes, labels) use bit
# shuffle, which strips their unused high bits; the quantised top-k increments (small uint16 values)
# compress best byte-shuffled at level 9; one-byte arrays (flips, masks) zstd level 9 alone.
_COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
_INT_COMPRESSOR = BloscCodec(cname="zstd", clevel=9, shuffle="bitshuffle")
_SMALL_INT_COMPRESSOR = BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")
_BYTE_COMPRESSOR = BloscCodec(cname="zstd", clevel=9, shuffle="noshuffle")
# Every chunk ends with its CRC32C (the last bytes codec), so changed bytes fail to decode
# instead of decoding to other numbers; see kdcache/cache/_integrity.py.
_COMPRESSORS = (_COMPRESSOR, Crc32cCodec())
_KEY_COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())  # zarr's default for strings, plus the checksum
# Every chunk is written, even one equal to the fill value, so a missing chunk is damage.
WRITE_ALL = {"write_empty_chunks": True}
_KEY_CHUNK = 16384


def _compressors(dtype: Any, name: str = "") -> tuple:
    """The codecs of a new array ``name`` of ``dtype`` (format 2; see the notes on the compressors above)."""
    dt = np.dtype(dtype)
    if name == "topk_steps":
        return (_SMALL_INT_COMPRESSOR, *_COMPRESSORS[1:])
    if dt.itemsize == 1:
        return (_BYTE_COMPRESSOR, *_COMPRESSORS[1:])
    if dt.kind in "iu":
        return (_INT_COMPRESSOR, *_COMPRESSORS[1:])
    return _COMPRESSORS


def array_recipes(n: int, num_views: int, layout: UnitLayout, block_size: int,
                  seal_copy: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``create_array`` arguments of every array of a new cache, by name (creation, and the rewrite of a
    damaged ``zarr.json``, which must produce the same bytes). ``done`` carries a copy of the seal."""
    out: dict[str, dict[str, Any]] = {
        "sample_key": dict(shape=(n,), chunks=(min(n, _KEY_CHUNK),), dtype=str, compressors=_KEY_COMPRESSORS,
                           config=WRITE_ALL),
        "label": dict(shape=(n,), chunks=(min(n, _KEY_CHUNK),), dtype="int32", compressors=_compressors("int32"),
                      fill_value=0, config=WRITE_ALL),
    }
    for name, (trail, dtype) in layout.specs.items():
        out[name] = dict(shape=(n, num_views, *trail), chunks=(block_size, 1, *trail), dtype=dtype,
                         compressors=_compressors(dtype, name), fill_value=0, config=WRITE_ALL)
    out["done"] = dict(shape=(n, num_views), chunks=(block_size, 1), dtype=bool, compressors=_compressors(bool),
                       fill_value=False, config=WRITE_ALL,
                       attributes={SEAL_COPY_ATTR: dict(seal_copy)} if seal_copy is not None else None)
    return out
