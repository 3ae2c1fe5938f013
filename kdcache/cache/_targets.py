"""Target modes: what a cache stores of the teacher's output for each view.

``full``    — every logit, float16, shape (N, V, C).
``topk:K``  — the K largest *raw logits* (float16) and their class indices, shape (N, V, K),
plus ``topk_tail_lse`` (N, V): the log-sum-exp of the C−K logits left out, so the mass
of the tail at temperature 1 is known exactly (``-inf`` when K == C).
Raw logits, not probabilities, so the student can pick the softmax temperature later.
``argmax`` (N, V) is stored in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdcache.errors import ConfigError

__all__ = ["TargetMode", "smallest_int_dtype"]


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
        """Every per-view array this mode stores (argmax included)."""
        if self.kind == "full":
            return ("logits", "argmax")
        return ("topk_values", "topk_indices", "topk_tail_lse", "argmax")

    def encode(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """The stored targets of (B, C) finite float32 logits: float16 logits or top-k + tail, and argmax."""
        out: dict[str, np.ndarray] = {"argmax": logits.argmax(dim=1).numpy()}
        if self.kind == "full":
            out["logits"] = logits.to(torch.float16).numpy()
            return out
        values, indices = torch.topk(logits, self.k, dim=1)
        out["topk_values"] = values.to(torch.float16).numpy()
        out["topk_indices"] = indices.numpy()
        out["topk_tail_lse"] = torch.logsumexp(logits.scatter(1, indices, float("-inf")), dim=1
                                               ).to(torch.float16).numpy()
        return out

    def array_specs(self, num_classes: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-view target arrays: name -> (trailing shape, dtype)."""
        argmax = {"argmax": ((), smallest_int_dtype(num_classes - 1, signed=True))}
        if self.kind == "full":
            return {"logits": ((num_classes,), np.dtype(np.float16)), **argmax}
        return {
            "topk_values": ((self.k,), np.dtype(np.float16)),
            "topk_indices": ((self.k,), smallest_int_dtype(num_classes - 1)),
            "topk_tail_lse": ((), np.dtype(np.float16)),
            **argmax,
        }
