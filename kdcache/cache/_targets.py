"""Target modes: what a cache stores of the teacher's output for each view, and how it is read back.

``full``    — every logit, float16, shape (N, V, C), and ``argmax`` (N, V).
``topk:K``  — the K largest logits, quantised relative to the view's top logit (format 2):

* ``topk_indices`` (N, V, K): their classes, largest logit first (``argmax`` is ``topk_indices[..., 0]``);
* ``topk_steps`` (N, V, K−1), uint16 (absent when K = 1): logit ``i`` lies ``q_i / 16`` below the top one,
  with ``q_i = round(16 · (top − logit_i))``; the array holds the increments ``q_i − q_{i−1}`` (``q_0 = 0``),
  which are small and compress to a few bits;
* ``topk_tail`` (N, V), float16: the log-sum-exp of the C−K logits left out, minus the top logit
  (``-inf`` when K = C), so the tail's total mass is known and the temperature can change later.

Read back (:func:`decode_targets`), ``topk_values`` are the top-k logits *relative to the top one* (the
first is 0; every softmax, at any temperature, is unchanged by that shift) and ``topk_tail_lse`` is the
tail's log-sum-exp on the same scale. Error bound: each decoded value is within ``TOPK_STEP / 2 = 1/32``
of the teacher's (relative) logit; the tail carries float16 rounding (relative error ≤ 2^-11). (An increment
saturates only where two consecutive top-k logits lie more than 65535 / 16 ≈ 4096 apart; every value from
there on then decodes closer to the top than it is, yet still at least 4096 below it: a probability under
``e^(-4096 / T)`` of the top class's either way.)

Format-1 caches stored ``topk_values`` and ``topk_tail_lse`` as raw float16 logits and a separate ``argmax``;
they are read back unchanged (raw logits), which gives the same softmax.

``none``    — no logits (a teacher without a class head): only with an embedding.

**Embeddings** (format 4). ``+pooled:float16`` or ``+pooled:int8`` after the logits part (``full+pooled:int8``,
``none+pooled:float16``) adds the teacher's pooled pre-logits vector of each view
(:func:`~kdcache.models.pooled_embedder`), encoded by :class:`~kdcache.cache._embcodec.EmbeddingCodec`:

* ``embedding`` (N, V, D): float16, or int8 quantised with one scale per vector;
* ``embedding_scale`` (N, V), float32: the int8 vectors' scales (absent for float16).

Read back, ``embedding`` is float32 (N, ..., D): the float16 values, or ``q · scale``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kdcache.cache._embcodec import EMBEDDING_DTYPES, EmbeddingCodec
from kdcache.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where targets are encoded (a dump): reading a cache needs no torch
    import torch

__all__ = ["TargetMode", "smallest_int_dtype", "decode_targets", "stored_argmax", "TOPK_STEP", "TOPK_MAX_INCREMENT",
           "EMBEDDING_ARRAYS", "EMBED_KINDS"]

TOPK_STEP = 1.0 / 16  # logit units per quantisation step of a top-k value below the top logit
TOPK_MAX_INCREMENT = 65535  # uint16: the largest stored increment between consecutive top-k values
_TOPK = ("topk_indices", "topk_steps", "topk_tail")
_TOPK_V1 = ("topk_values", "topk_indices", "topk_tail_lse", "argmax")  # format 1: raw float16 logits
EMBEDDING_ARRAYS = ("embedding", "embedding_scale")
EMBED_KINDS = ("pooled",)  # what of the teacher is embedded: its pooled pre-logits features
_SYNTAX = ("expected 'full', 'topk:K' (K >= 1) or 'none', optionally followed by '+pooled:float16' or "
           "'+pooled:int8' (an embedding; 'none' needs one)")


def smallest_int_dtype(max_value: int, *, signed: bool = False) -> np.dtype:
    """Smallest integer dtype that holds values in [0, max_value] (or [-max_value-1, max_value])."""
    kinds = (np.int8, np.int16, np.int32, np.int64) if signed else (np.uint8, np.uint16, np.uint32, np.uint64)
    for t in kinds:
        if max_value <= np.iinfo(t).max:
            return np.dtype(t)
    raise ConfigError(f"no integer type holds {max_value}")


@dataclass(frozen=True)
class TargetMode:
    kind: str  # "full" | "topk" | "none"
    k: int = 0
    embedding: str = ""  # "" (none) | "float16" | "int8": the pooled embedding's codec

    @classmethod
    def parse(cls, text: str) -> "TargetMode":
        t = str(text).strip().lower()
        head, *rest = [p.strip() for p in t.split("+")]
        embedding = ""
        if len(rest) > 1:
            raise ConfigError(f"invalid targets {text!r}: one embedding at most; {_SYNTAX}")
        if rest:
            what, _, dtype = rest[0].partition(":")
            if what not in EMBED_KINDS or dtype not in EMBEDDING_DTYPES:
                raise ConfigError(f"invalid targets {text!r}: {_SYNTAX}")
            embedding = dtype
        if head == "full":
            return cls("full", 0, embedding)
        if head == "none":
            if not embedding:
                raise ConfigError(f"invalid targets {text!r}: 'none' stores nothing without an embedding; {_SYNTAX}")
            return cls("none", 0, embedding)
        if head.startswith("topk:"):
            try:
                k = int(head[5:])
            except ValueError:
                k = 0
            if k >= 1:
                return cls("topk", k, embedding)
        raise ConfigError(f"invalid targets {text!r}: {_SYNTAX}")

    def __str__(self) -> str:
        head = {"full": "full", "none": "none"}.get(self.kind, f"topk:{self.k}")
        return f"{head}+pooled:{self.embedding}" if self.embedding else head

    @property
    def logits(self) -> str:
        """The logits part alone (``full``, ``topk:K`` or ``none``)."""
        return str(TargetMode(self.kind, self.k))

    @property
    def has_logits(self) -> bool:
        return self.kind != "none"

    @property
    def codec(self) -> EmbeddingCodec | None:
        """The embedding's codec, None without an embedding."""
        return EmbeddingCodec(self.embedding) if self.embedding else None

    def check_classes(self, num_classes: int) -> None:
        if self.kind == "topk" and self.k > num_classes:
            raise ConfigError(f"targets {self}: K={self.k} exceeds the number of classes ({num_classes})")

    @property
    def target_names(self) -> tuple[str, ...]:
        """Every per-view array this mode may store, in any format's encoding (``argmax`` included)."""
        emb = EMBEDDING_ARRAYS if self.embedding else ()
        if self.kind == "full":
            return ("logits", "argmax", *emb)
        if self.kind == "none":
            return emb
        return (*dict.fromkeys(_TOPK + _TOPK_V1), *emb)

    def encode(self, logits: torch.Tensor | None, names: tuple[str, ...] | list[str] | None = None, *,
               embedding: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """The stored targets of (B, C) finite float32 logits (and the (B, D) ``embedding`` when the mode has
        one): the arrays ``names`` (a cache's target arrays; default: this format's), so that format-1 caches
        extended today keep their own encoding."""
        import torch

        out: dict[str, np.ndarray] = {}
        if self.embedding:
            if embedding is None:
                raise ConfigError(f"targets {self} need the teacher's embedding")
            stored = self.codec.encode(embedding)
            out["embedding"] = stored["values"]
            if "scales" in stored:
                out["embedding_scale"] = stored["scales"]
        if self.kind == "none":
            return {n: out[n] for n in (names if names is not None else out)}
        if logits is None:
            raise ConfigError(f"targets {self} need the teacher's logits, and it gave none (a model without a class "
                              "head: use targets 'none+pooled:float16')")
        if names is None:
            dim = embedding.shape[1] if embedding is not None else None
            names = tuple(self.array_specs(logits.shape[1], embedding_dim=dim))
        names = tuple(names)
        if self.kind == "full":
            out["logits"] = logits.to(torch.float16).numpy()
            out["argmax"] = logits.argmax(dim=1).numpy()
            return {n: out[n] for n in names}
        values, indices = torch.topk(logits, self.k, dim=1)
        tail = torch.logsumexp(logits.scatter(1, indices, float("-inf")), dim=1)
        out["topk_indices"] = indices.numpy()
        if "topk_values" in names:  # format 1
            out.update(topk_values=values.to(torch.float16).numpy(), topk_tail_lse=tail.to(torch.float16).numpy(),
                       argmax=logits.argmax(dim=1).numpy())  # as kdcache 0.1 wrote it (ties included)
        else:
            top = values[:, :1]
            q = torch.round((top - values[:, 1:]).double() / TOPK_STEP).to(torch.int64)  # non-decreasing
            inc = torch.diff(q, dim=1, prepend=q.new_zeros(len(q), 1)).clamp_(0, TOPK_MAX_INCREMENT)
            out["topk_steps"] = inc.numpy().astype(np.uint16)
            out["topk_tail"] = (tail - top[:, 0]).to(torch.float16).numpy()
        return {n: out[n] for n in names}

    def decode(self, stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The targets a loss reads from stored arrays (as tensors): :func:`decode_targets`."""
        return decode_targets(stored)

    def array_specs(self, num_classes: int, *, embedding_dim: int | None = None
                    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-view target arrays of a new cache: name -> (trailing shape, dtype). ``embedding_dim``: the
        teacher's embedding length, needed when the mode has an embedding."""
        specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        if self.kind == "full":
            specs = {"logits": ((num_classes,), np.dtype(np.float16)),
                     "argmax": ((), smallest_int_dtype(num_classes - 1, signed=True))}
        elif self.kind == "topk":
            specs = {"topk_indices": ((self.k,), smallest_int_dtype(num_classes - 1))}
            if self.k > 1:
                specs["topk_steps"] = ((self.k - 1,), np.dtype(np.uint16))
            specs["topk_tail"] = ((), np.dtype(np.float16))
        if self.embedding:
            if embedding_dim is None:
                raise ConfigError(f"targets {self}: the embedding's dimension is needed")
            for key, (shape, dtype) in self.codec.arrays(int(embedding_dim)).items():
                specs["embedding" if key == "values" else "embedding_scale"] = (shape, np.dtype(dtype))
        return specs


def decode_targets(stored: Mapping[str, Any]) -> dict[str, Any]:
    """What a student learns from, given a view's (or a batch's) stored target arrays (numpy arrays, or
    tensors: the result is then tensors on the same device): ``logits`` and ``argmax`` (full), or
    ``topk_values``, ``topk_indices``, ``topk_tail_lse`` and ``argmax`` (top-k; format 2 decoded relative to
    the top logit, format 1 as stored). Leading dimensions are kept. Decoding runs in numpy: a batch's
    targets are small, and numpy's per-call cost is a fraction of torch's. An ``embedding`` comes back float32
    (int8 vectors multiplied by their ``embedding_scale``)."""
    if "topk_tail" not in stored and "embedding" not in stored:  # full, or format-1 top-k: stored as read
        return dict(stored)
    first = next(iter(stored.values()))
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; numpy arrays need no torch
    if torch is not None and isinstance(first, torch.Tensor):
        out = decode_targets({k: v.detach().cpu().numpy() for k, v in stored.items()})
        return {k: torch.from_numpy(v).to(first.device) for k, v in out.items()}
    out = {k: v for k, v in stored.items() if k not in (*_TOPK, *EMBEDDING_ARRAYS)}
    if "embedding" in stored:
        q = np.asarray(stored["embedding"])
        out["embedding"] = (q.astype(np.float32) * np.asarray(stored["embedding_scale"], np.float32)[..., None]
                            if "embedding_scale" in stored else q.astype(np.float32))
    if "topk_tail" not in stored:
        return out
    indices = np.asarray(stored["topk_indices"])
    values = np.zeros(indices.shape, dtype=np.float32)
    if "topk_steps" in stored:
        np.multiply(np.cumsum(stored["topk_steps"], axis=-1, dtype=np.int64), -TOPK_STEP, out=values[..., 1:],
                    casting="unsafe")
    return {**out, "topk_values": values, "topk_indices": indices,
            "topk_tail_lse": np.asarray(stored["topk_tail"], dtype=np.float32),
            "argmax": np.ascontiguousarray(indices[..., 0])}


def stored_argmax(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The teacher's argmax from a cache's stored arrays: ``argmax``, or the first top-k index (format 2)."""
    return arrays["argmax"] if "argmax" in arrays else arrays["topk_indices"][..., 0]
