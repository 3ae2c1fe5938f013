"""The unit layout: which per-view arrays make one cache unit, their shapes and dtypes.

A *unit* is one block of samples × one view; it owns one chunk of every per-view array.
Its arrays fall into three groups, and this module is the one place that says which:

* ``view_seed`` — the view's derived seed: format-1 caches only; from format 2 on it is not stored, since
  ``derive_view_seed(seed, key, view)`` recomputes it from the cache's seed, the sample key and the view;
* the recorded view parameters (``crop``, ``flip``, mixing arrays: named by the view spec);
* the teacher's targets (named by the :class:`~kdcache.cache._targets.TargetMode`).

The dump builds a unit from the teacher's logits and the drawn parameters, the store
creates and checks arrays from it, a student reads the parameters (to replay) and the
targets (to learn from), and ``verify`` scans the float targets — all through a layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcache.cache._targets import EMBEDDING_ARRAYS, TargetMode, smallest_int_dtype

__all__ = ["UnitLayout", "VIEW_SEED", "CROP_ARRAYS"]

VIEW_SEED = "view_seed"
# Parameter arrays that hold pixel coordinates: narrowed to the smallest integer type the images allow.
CROP_ARRAYS = ("crop", "partner_crop", "mix_box")

Spec = tuple[tuple[int, ...], np.dtype]


@dataclass(frozen=True)
class UnitLayout:
    """Names, trailing shapes and dtypes of a unit's arrays, in write order (parameters, then targets;
    a format-1 cache starts with ``view_seed``)."""

    mode: TargetMode
    specs: Mapping[str, Spec]

    @classmethod
    def build(cls, mode: TargetMode, num_classes: int, param_specs: Mapping[str, tuple[tuple[int, ...], Any]],
              *, max_coordinate: int | None = None, embedding_dim: int | None = None) -> UnitLayout:
        """The layout of a new cache. ``max_coordinate``: the largest pixel coordinate a crop or box can
        take when it is known in advance (images of one shape); crop arrays then use the smallest signed
        integer type that holds it. None keeps the parameter spec's type (image sizes vary).
        ``embedding_dim``: the teacher's embedding length (targets with an embedding)."""
        specs: dict[str, Spec] = {}
        for name, (shape, dtype) in param_specs.items():
            dt = np.dtype(dtype)
            if name in CROP_ARRAYS and max_coordinate is not None:
                dt = smallest_int_dtype(int(max_coordinate), signed=True)
            specs[name] = (tuple(shape), dt)
        specs.update({k: (tuple(s), np.dtype(d))
                      for k, (s, d) in mode.array_specs(num_classes, embedding_dim=embedding_dim).items()})
        return cls(mode, specs)

    @classmethod
    def of_arrays(cls, mode: TargetMode, arrays: Mapping[str, Any]) -> UnitLayout:
        """The layout of an existing cache from its per-view arrays (anything with ``shape`` and ``dtype``)."""
        return cls(mode, {n: (tuple(a.shape[2:]), np.dtype(a.dtype)) for n, a in arrays.items()})

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def on_disk(self, param_arrays: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """``view_spec.param_arrays`` (name -> shape, dtype) with each dtype as this layout stores it (the
        crop arrays narrowed), so the description and the disk agree."""
        return {n: {**d, "dtype": str(self.specs[n][1]) if n in self.specs else d["dtype"]}
                for n, d in param_arrays.items()}

    @property
    def target_names(self) -> list[str]:
        """The teacher's targets of a view (what a student learns from)."""
        return [n for n in self.specs if n in self.mode.target_names]

    @property
    def replay_names(self) -> list[str]:
        """Everything but the targets: what a student reads to rebuild the view."""
        return [n for n in self.specs if n not in self.mode.target_names]

    @property
    def logit_target_names(self) -> list[str]:
        """The targets of the teacher's logits (no embedding): what logit distillation reads."""
        return [n for n in self.target_names if n not in EMBEDDING_ARRAYS]

    @property
    def target_bytes_per_view(self) -> int:
        """Uncompressed bytes of one view's targets (what a student holds in memory per sample)."""
        return self.bytes_per_view(self.target_names)

    def bytes_per_view(self, names) -> int:
        """Uncompressed bytes of one view's arrays ``names``."""
        return sum(int(np.prod(self.specs[n][0], dtype=np.int64)) * self.specs[n][1].itemsize for n in names)

    def encode_targets(self, logits, embedding=None) -> dict[str, np.ndarray]:
        """A unit's target arrays from (B, C) float32 logits (None for targets ``none+...``) and the (B, D)
        embedding (targets with one), in this cache's own encoding."""
        return self.mode.encode(logits, self.target_names, embedding=embedding)

    @property
    def embedding_dim(self) -> int | None:
        """The stored embedding's length, None without one."""
        return int(self.specs["embedding"][0][0]) if "embedding" in self.specs else None

    @property
    def float_target_names(self) -> list[str]:
        """Targets that must be finite (scanned for NaN/Inf)."""
        return [n for n in self.target_names if np.issubdtype(self.specs[n][1], np.floating)]

    def split(self, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(replay arrays, target arrays) of a unit or an epoch's gathered rows."""
        targets = set(self.mode.target_names)
        return ({k: v for k, v in arrays.items() if k not in targets},
                {k: v for k, v in arrays.items() if k in targets})
