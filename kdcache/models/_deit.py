"""DeiT presets (Touvron et al., "Training data-efficient image transformers & distillation through attention", 2021).

Each builder is a few lines of architecture arguments over
:class:`~kdcache.models._vit.VisionTransformer`. The ``_distilled`` variants carry the distillation
token and ``head_dist`` as their own parameters: in training they return ``(cls_logits,
dist_logits)``, in eval the average of the two.

The CIFAR-scale ``deit_tiny_patch4_32`` keeps DeiT-Ti's full width and depth (192 wide, 12 blocks,
3 heads) on 32 px input cut into 4 px patches (an 8x8 grid, as many tokens as the 224 px models
have per 28 px); pass ``depth=...`` to make it lighter.
"""

from __future__ import annotations

from typing import Any

from kdcache.models._registry import register_model
from kdcache.models._vit import VisionTransformer, build_vit

__all__: list[str] = []

_TINY = {"embed_dim": 192, "depth": 12, "num_heads": 3}
# DeiT-Ti's layout at 96 wide and 6 blocks (0.68 M parameters): the DeiT of the README's CIFAR-10 tables, which
# trains about as fast as a ResNet-20 on 2 CPU cores (DeiT-Ti itself, 5.4 M, is 7x slower)
_MINI = {"embed_dim": 96, "depth": 6, "num_heads": 3}
_SMALL = {"embed_dim": 384, "depth": 12, "num_heads": 6}
_BASE = {"embed_dim": 768, "depth": 12, "num_heads": 12}
_P16_224 = {"img_size": 224, "patch_size": 16}
_P4_32 = {"img_size": 32, "patch_size": 4}
_TEST = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
_DISTILLED = {"distilled": True}


def _build(name: str, num_classes: int, overrides: dict[str, Any], *parts: dict[str, Any]) -> VisionTransformer:
    defaults: dict[str, Any] = {}
    for part in parts:
        defaults.update(part)
    return build_vit(name, num_classes=num_classes, defaults=defaults, overrides=overrides)


@register_model(tags=("student",))
def deit_tiny_patch16_224(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-Ti: 224 px, patch 16, 192 wide, 12 blocks, 3 heads."""
    return _build("deit_tiny_patch16_224", num_classes, overrides, _P16_224, _TINY)


@register_model(tags=("student",))
def deit_small_patch16_224(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-S: 224 px, patch 16, 384 wide, 12 blocks, 6 heads."""
    return _build("deit_small_patch16_224", num_classes, overrides, _P16_224, _SMALL)


@register_model(tags=("student", "teacher"))
def deit_base_patch16_224(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-B: 224 px, patch 16, 768 wide, 12 blocks, 12 heads."""
    return _build("deit_base_patch16_224", num_classes, overrides, _P16_224, _BASE)


@register_model(tags=("student",))
def deit_tiny_patch16_224_distilled(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-Ti with a distillation token and head."""
    return _build("deit_tiny_patch16_224_distilled", num_classes, overrides, _P16_224, _TINY, _DISTILLED)


@register_model(tags=("student",))
def deit_small_patch16_224_distilled(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-S with a distillation token and head."""
    return _build("deit_small_patch16_224_distilled", num_classes, overrides, _P16_224, _SMALL, _DISTILLED)


@register_model(tags=("student",))
def deit_base_patch16_224_distilled(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-B with a distillation token and head."""
    return _build("deit_base_patch16_224_distilled", num_classes, overrides, _P16_224, _BASE, _DISTILLED)


@register_model(tags=("student",))
def deit_tiny_patch4_32(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-Ti for 32 px CIFAR input: patch 4 (8x8 grid), 192 wide, 12 blocks, 3 heads."""
    return _build("deit_tiny_patch4_32", num_classes, overrides, _P4_32, _TINY)


@register_model(tags=("student",))
def deit_tiny_patch4_32_distilled(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-Ti for 32 px CIFAR input with a distillation token and head."""
    return _build("deit_tiny_patch4_32_distilled", num_classes, overrides, _P4_32, _TINY, _DISTILLED)


@register_model(tags=("student",))
def deit_mini_patch4_32(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-mini for 32 px CIFAR input: patch 4, 96 wide, 6 blocks, 3 heads (the README's CIFAR-10 tables)."""
    return _build("deit_mini_patch4_32", num_classes, overrides, _P4_32, _MINI)


@register_model(tags=("student",))
def deit_mini_patch4_32_distilled(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """DeiT-mini for 32 px CIFAR input with a distillation token and head (the README's CIFAR-10 tables)."""
    return _build("deit_mini_patch4_32_distilled", num_classes, overrides, _P4_32, _MINI, _DISTILLED)


@register_model(tags=("student", "test"))
def deit_test(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """Tiny DeiT for fast tests (32 px, patch 8, dim 32, 2 blocks, 2 heads)."""
    return _build("deit_test", num_classes, overrides, _TEST)


@register_model(tags=("student", "test"))
def deit_test_distilled(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """Tiny distilled DeiT for fast tests (32 px, patch 8, dim 32, 2 blocks, 2 heads)."""
    return _build("deit_test_distilled", num_classes, overrides, _TEST, _DISTILLED)
