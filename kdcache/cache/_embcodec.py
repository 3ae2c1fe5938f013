"""How a cache stores embedding vectors: float16, or int8 with one float32 scale per vector.

``float16`` — each value rounded to float16: ``2·D`` bytes per vector, relative error ≤ 2^-11 per value.
Values beyond float16's range (|x| > 65504) are refused rather than stored as infinities.

``int8`` — symmetric per-vector quantisation: ``scale = max|x| / 127`` (float32), ``q = round(x / scale)``
(round to nearest, ties to even) clipped to [-127, 127], decoded as ``q · scale``: ``D + 4`` bytes per
vector. Each value is within ``scale / 2 = max|x| / 254`` of the original, so the error is relative to the
vector's largest component (cosine against float32: ``bench/embedding_codec.py``, docs/benchmarks.md).
A zero vector stores scale 0 and decodes to zeros.

Non-finite input (NaN, ±Inf) is refused with a :class:`~kdcache.errors.TeacherOutputError` naming the first
bad row: nothing of the batch is encoded. This module is plain numpy: the dump encodes with it, the
trainer decodes with it, the store only holds the arrays (named by the caller).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcache.errors import ConfigError, TeacherOutputError

__all__ = ["EMBEDDING_DTYPES", "EmbeddingCodec", "row_cosine"]

EMBEDDING_DTYPES = ("float16", "int8")
_F16_MAX = float(np.finfo(np.float16).max)
_QMAX = 127


def _float32_rows(x: Any) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; reading a cache needs no torch
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ConfigError(f"embeddings must be a (N, D) batch with D >= 1, got shape {a.shape}")
    return a


def _check_finite(a: np.ndarray) -> None:
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TeacherOutputError(f"embedding row {row} is not finite (NaN or Inf; {int(bad.sum())} of {len(a)} rows "
                                 "in this batch): check the model's weights and `amp`")


@dataclass(frozen=True)
class EmbeddingCodec:
    """``encode`` a float32 (N, D) batch to arrays, ``decode`` them back to float32 (N, D).

    ``encode`` returns ``{"values": (N, D)}`` for float16 and ``{"values": (N, D) int8, "scales": (N,)
    float32}`` for int8; ``decode`` takes the same mapping.
    """

    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in EMBEDDING_DTYPES:
            raise ConfigError(f"embedding dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbeddingCodec:
        return cls(dtype=str(d.get("dtype", "")))

    def bytes_per_vector(self, dim: int) -> int:
        """Stored bytes of one ``dim``-long vector (before any compression)."""
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"embedding dimension must be a positive integer, got {dim!r}")
        return 2 * dim if self.dtype == "float16" else dim + 4

    def arrays(self, dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Each stored array's per-vector shape and dtype (what a store creates for ``dim``-long vectors)."""
        self.bytes_per_vector(dim)
        if self.dtype == "float16":
            return {"values": ((dim,), "float16")}
        return {"values": ((dim,), "int8"), "scales": ((), "float32")}

    def encode(self, x: Any) -> dict[str, np.ndarray]:
        a = _float32_rows(x)
        _check_finite(a)
        if self.dtype == "float16":
            over = np.abs(a).max(axis=1, initial=0.0) > _F16_MAX
            if over.any():
                row = int(np.flatnonzero(over)[0])
                raise TeacherOutputError(f"embedding row {row} overflows float16 (|x| > 65504); store it as int8")
            return {"values": a.astype(np.float16)}
        scales = (np.abs(a).max(axis=1, initial=0.0) / np.float32(_QMAX)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(scales[:, None] > 0, np.rint(a / scales[:, None]), 0.0)
        return {"values": np.clip(q, -_QMAX, _QMAX).astype(np.int8), "scales": scales}

    def decode(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        values = np.asarray(arrays["values"])
        if self.dtype == "float16":
            return values.astype(np.float32)
        return values.astype(np.float32) * np.asarray(arrays["scales"], dtype=np.float32)[..., None]


def row_cosine(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, D) batches, in float64; two zero rows count as 1, one as 0."""
    x, y = _float32_rows(a).astype(np.float64), _float32_rows(b).astype(np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"cannot compare embeddings of shapes {x.shape} and {y.shape}")
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (x * y).sum(axis=1) / (nx * ny)
    both_zero = (nx == 0) & (ny == 0)
    return np.where(both_zero, 1.0, np.where((nx == 0) | (ny == 0), 0.0, cos))
