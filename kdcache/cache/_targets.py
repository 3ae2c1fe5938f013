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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdcache.errors import ConfigError

__all__ = ["TargetMode", "smallest_int_dtype", "decode_targets", "stored_argmax", "TOPK_STEP", "TOPK_MAX_INCREMENT"]

TOPK_STEP = 1.0 / 16  # logit units per quantisation step of a top-k value below the top logit
TOPK_MAX_INCREMENT = 65535  # uint16: the largest stored increment between consecutive top-k values
_TOPK = ("topk_indices", "topk_steps", "topk_tail")
_TOPK_V1 = ("topk_values", "topk_indices", "topk_tail_lse", "argmax")  # format 1: raw float16 logits


def smallest_int_dtype(max_value: int, *, signed: bool = False) -> np.dtype:
    """Smallest integer dtype that holds values in [0, max_value] (or [-max_value-1, max_value])."""
    kinds = (np.int8, np.int16, np.int32, np.int64) if signed else (np.uint8, np.uint16, np.uint32, np.uint64)
    for t in kinds:
        if max_value <= np.iinfo(t).max:
            return np.dtype(t)
    raise ConfigError(f"no integer type holds {max_value}")


@dataclass(frozen=True)
class TargetMode:
    kind: str  # "full" | "topk"
    k: int = 0

    @classmethod
    def parse(cls, text: str) -> "TargetMode":
        t = str(text).strip().lower()
        if t == "full":
            return cls("full")
        if t.startswith("topk:"):
            try:
                k = int(t[5:])
            except ValueError:
                k = 0
            if k >= 1:
                return cls("topk", k)
        raise ConfigError(f"invalid targets {text!r}: expected 'full' or 'topk:K' with K >= 1")

    def __str__(self) -> str:
        return "full" if self.kind == "full" else f"topk:{self.k}"

    def check_classes(self, num_classes: int) -> None:
        if self.kind == "topk" and self.k > num_classes:
            raise ConfigError(f"targets {self}: K={self.k} exceeds the number of classes ({num_classes})")

    @property
    def target_names(self) -> tuple[str, ...]:
        """Every per-view array this mode may store, in any format's encoding (``argmax`` included)."""
        if self.kind == "full":
            return ("logits", "argmax")
        return tuple(dict.fromkeys(_TOPK + _TOPK_V1))

    def encode(self, logits: torch.Tensor, names: tuple[str, ...] | list[str] | None = None
               ) -> dict[str, np.ndarray]:
        """The stored targets of (B, C) finite float32 logits: the arrays ``names`` (a cache's target arrays;
        default: this format's), so that format-1 caches extended today keep their own encoding."""
        names = tuple(names) if names is not None else tuple(self.array_specs(logits.shape[1]))
        out: dict[str, np.ndarray] = {}
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

    def array_specs(self, num_classes: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-view target arrays of a new (format-2) cache: name -> (trailing shape, dtype)."""
        if self.kind == "full":
            return {"logits": ((num_classes,), np.dtype(np.float16)),
                    "argmax": ((), smallest_int_dtype(num_classes - 1, signed=True))}
        specs = {"topk_indices": ((self.k,), smallest_int_dtype(num_classes - 1))}
        if self.k > 1:
            specs["topk_steps"] = ((self.k - 1,), np.dtype(np.uint16))
        specs["topk_tail"] = ((), np.dtype(np.float16))
        return specs


def decode_targets(stored: Mapping[str, Any]) -> dict[str, Any]:
    """What a student learns from, given a view's (or a batch's) stored target arrays (numpy arrays, or
    tensors: the result is then tensors on the same device): ``logits`` and ``argmax`` (full), or
    ``topk_values``, ``topk_indices``, ``topk_tail_lse`` and ``argmax`` (top-k; format 2 decoded relative to
    the top logit, format 1 as stored). Leading dimensions are kept. Decoding runs in numpy: a batch's
    targets are small, and numpy's per-call cost is a fraction of torch's."""
    if "topk_tail" not in stored:  # full, or a format-1 top-k cache: stored as read
        return dict(stored)
    first = stored["topk_indices"]
    if isinstance(first, torch.Tensor):
        out = decode_targets({k: v.detach().cpu().numpy() for k, v in stored.items()})
        return {k: torch.from_numpy(v).to(first.device) for k, v in out.items()}
    indices = np.asarray(first)
    values = np.zeros(indices.shape, dtype=np.float32)
    if "topk_steps" in stored:
        np.multiply(np.cumsum(stored["topk_steps"], axis=-1, dtype=np.int64), -TOPK_STEP, out=values[..., 1:],
                    casting="unsafe")
    return {"topk_values": values, "topk_indices": indices,
            "topk_tail_lse": np.asarray(stored["topk_tail"], dtype=np.float32),
            "argmax": np.ascontiguousarray(indices[..., 0])}


def stored_argmax(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The teacher's argmax from a cache's stored arrays: ``argmax``, or the first top-k index (format 2)."""
    return arrays["argmax"] if "argmax" in arrays else arrays["topk_indices"][..., 0]
