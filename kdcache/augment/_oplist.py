"""The list of per-sample view ops and the order a spec turns them on (the one module that names every op).

The op interface (:mod:`kdcache.augment._op`) knows no op; each op family is its own module; the pipeline, the
parameter arrays and the format description get a spec's ops from :func:`build_ops`.
"""

from __future__ import annotations

from kdcache.augment._autoaug import AutoAugmentOp
from kdcache.augment._color import ColorJitterOp, ThreeAugmentOp
from kdcache.augment._erase import RandomErasingOp
from kdcache.augment._op import ViewOp
from kdcache.augment._spec import ViewSpec

__all__ = ["build_ops"]


def build_ops(spec: ViewSpec) -> list[ViewOp]:
    """The per-sample ops ``spec`` turns on, in application (and draw) order: auto-augment, 3-Augment,
    colour jitter (uint8), then random erasing (float) — timm's and DeiT III's order."""
    ops: list[ViewOp] = []
    if spec.auto_augment != "none":
        ops.append(AutoAugmentOp(spec))
    if spec.three_augment:
        ops.append(ThreeAugmentOp(spec))
    if any(spec.color_jitter):
        ops.append(ColorJitterOp(spec))
    if spec.reprob > 0:
        ops.append(RandomErasingOp(spec))
    return ops
