"""``ViewParams`` — the recorded randomness of one view — and its array layout in the cache.

Parameters are plain numbers so they can sit next to the teacher's logits in fixed-dtype
arrays. The layout (:func:`param_array_specs`) is the single place that names and types
those arrays; :func:`params_to_arrays` and :func:`params_from_arrays` convert exactly,
so a view replayed from the cache equals the view the teacher saw, bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kdcache.errors import ConfigError, DataError

if TYPE_CHECKING:
    from kdcache.augment._spec import ViewSpec

__all__ = [
    "MIX_CUTMIX",
    "MIX_MIXUP",
    "MIX_NONE",
    "ViewParams",
    "param_array_specs",
    "params_from_arrays",
    "params_to_arrays",
    "op_array_specs",
]

MIX_NONE, MIX_MIXUP, MIX_CUTMIX = 0, 1, 2

# name -> (trailing shape, numpy dtype); the mixed arrays exist only for mixed specs.
_BASE_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "crop": ((4,), "int32"),
    "flip": ((), "bool"),
}
_MIX_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "mix_kind": ((), "int8"),
    "mix_partner": ((), "int32"),
    "mix_lam": ((), "float32"),
    "mix_box": ((4,), "int32"),
    "partner_crop": ((4,), "int32"),
    "partner_flip": ((), "bool"),
}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, lists -> Python numbers and nested tuples (sampled == read back)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _int4(name: str, value: Any) -> tuple[int, int, int, int]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"ViewParams.{name} must be four integers, got {value!r}") from None
    if len(out) != 4:
        raise DataError(f"ViewParams.{name} must be four integers, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class ViewParams:
    """Recorded parameters of one view.

    ``crop`` is (top, left, height, width) in source pixels; ``flip`` mirrors horizontally.
    Mixed views (``mix_kind`` 1 = MixUp, 2 = CutMix) add the partner's dataset index, the
    partner's own crop and flip, ``lam`` — the weight of the sample itself, already rounded to
    float32 because that is what the cache stores and what :meth:`ViewPipeline.apply` uses —
    and for CutMix ``box`` = (y0, x0, y1, x1) in output pixels, the region taken from the partner.
    ``ops`` holds the parameters of the spec's per-sample ops (auto-augment, colour, erasing: array name ->
    value, see :func:`kdcache.augment._oplist.build_ops`), ``partner_ops`` the partner's own.
    """

    crop: tuple[int, int, int, int]
    flip: bool
    mix_kind: int = MIX_NONE
    partner: int = -1
    partner_crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    partner_flip: bool = False
    lam: float = 1.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    ops: Mapping[str, Any] = field(default_factory=dict)
    partner_ops: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Coerce numpy scalars and lists to plain Python values so params compare equal
        # whether they were sampled or read back from the cache arrays.
        put = object.__setattr__
        put(self, "crop", _int4("crop", self.crop))
        put(self, "partner_crop", _int4("partner_crop", self.partner_crop))
        put(self, "box", _int4("box", self.box))
        put(self, "flip", bool(self.flip))
        put(self, "partner_flip", bool(self.partner_flip))
        put(self, "mix_kind", int(self.mix_kind))
        put(self, "partner", int(self.partner))
        put(self, "lam", float(self.lam))
        put(self, "ops", {str(k): _plain(v) for k, v in dict(self.ops).items()})
        put(self, "partner_ops", {str(k): _plain(v) for k, v in dict(self.partner_ops).items()})
        if self.mix_kind not in (MIX_NONE, MIX_MIXUP, MIX_CUTMIX):
            raise DataError(
                f"ViewParams.mix_kind must be 0 (none), 1 (mixup) or 2 (cutmix), got {self.mix_kind!r}"
            )
        if not 0.0 <= self.lam <= 1.0:
            raise DataError(f"ViewParams.lam must lie in [0, 1], got {self.lam!r}")
        if self.mix_kind != MIX_NONE and self.partner < 0:
            raise DataError(f"a mixed view needs a partner index >= 0, got {self.partner!r}")

    @property
    def is_mixed(self) -> bool:
        return self.mix_kind != MIX_NONE


@functools.lru_cache(maxsize=64)
def op_array_specs(spec: ViewSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """The per-sample ops' arrays (a sample's own; a partner's carry the prefix ``partner_``). Cached per spec:
    callers must not modify the result."""
    from kdcache.augment._oplist import build_ops  # the ops import torch; reading a cache needs none

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for op in build_ops(spec):
        out.update(op.arrays())
    return out


def param_array_specs(spec: ViewSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Array name -> (trailing shape, numpy dtype string) for the parameters of ``spec``'s views."""
    ops = op_array_specs(spec)
    out = {**_BASE_ARRAYS, **ops}
    if spec.is_mixed:
        out.update(_MIX_ARRAYS)
        out.update({f"partner_{k}": v for k, v in ops.items()})
    return out


def params_to_arrays(spec: ViewSpec, params: Sequence[ViewParams]) -> dict[str, np.ndarray]:
    """Stack ``params`` into the arrays named by :func:`param_array_specs` (first axis = view)."""
    if not spec.is_mixed:
        mixed = [i for i, p in enumerate(params) if p.is_mixed]
        if mixed:
            raise ConfigError(
                f"params {mixed[:5]} describe mixed views but the spec has mix={spec.mix!r}; "
                "they cannot be stored without losing the partner"
            )
    columns: dict[str, list[Any]] = {
        "crop": [p.crop for p in params],
        "flip": [p.flip for p in params],
    }
    if spec.is_mixed:
        columns.update(
            mix_kind=[p.mix_kind for p in params],
            mix_partner=[p.partner for p in params],
            mix_lam=[p.lam for p in params],
            mix_box=[p.box for p in params],
            partner_crop=[p.partner_crop for p in params],
            partner_flip=[p.partner_flip for p in params],
        )
    ops = op_array_specs(spec)
    for name in ops:
        lacking = [i for i, p in enumerate(params) if name not in p.ops]
        if lacking:
            raise ConfigError(f"params {lacking[:5]} have no {name!r} although the spec's ops record it")
        columns[name] = [p.ops[name] for p in params]
        if spec.is_mixed:
            # an unmixed view has no partner: its partner slots hold zeros
            columns[f"partner_{name}"] = [p.partner_ops.get(name, np.zeros(ops[name][0])) for p in params]
    out = {}
    for name, (shape, dtype) in param_array_specs(spec).items():
        out[name] = np.asarray(columns[name], dtype=dtype).reshape((len(params), *shape))
    return out


def params_from_arrays(spec: ViewSpec, arrays: Mapping[str, np.ndarray], i: int) -> ViewParams:
    """The :class:`ViewParams` at row ``i`` of ``arrays`` (as written by :func:`params_to_arrays`)."""
    missing = sorted(set(param_array_specs(spec)) - set(arrays))
    if missing:
        raise DataError(
            f"parameter arrays {missing} are missing (got {sorted(arrays)}); spec mix={spec.mix!r}"
        )
    crop, flip = np.asarray(arrays["crop"][i]), np.asarray(arrays["flip"][i])
    names = op_array_specs(spec)
    ops = {n: np.asarray(arrays[n][i]) for n in names}
    if not spec.is_mixed:
        return ViewParams(crop=tuple(crop.tolist()), flip=bool(flip), ops=ops)
    return ViewParams(
        ops=ops,
        partner_ops={n: np.asarray(arrays[f"partner_{n}"][i]) for n in names},
        crop=tuple(crop.tolist()),
        flip=bool(flip),
        mix_kind=int(arrays["mix_kind"][i]),
        partner=int(arrays["mix_partner"][i]),
        partner_crop=tuple(np.asarray(arrays["partner_crop"][i]).tolist()),
        partner_flip=bool(arrays["partner_flip"][i]),
        # float32 -> Python float is exact, so this equals the lam make_params returned.
        lam=float(np.float32(arrays["mix_lam"][i])),
        box=tuple(np.asarray(arrays["mix_box"][i]).tolist()),
    )
