"""Named view recipes: the view options of common training recipes, set together.

A preset is a plain mapping of :class:`~kdcache.augment.ViewSpec` fields. It sits between a model's default
input (size, normalisation) and the options given explicitly, which override it. The preset's name travels
in the dump's and the run's configuration (``view.preset``), and ``info`` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdcache.errors import ConfigError

__all__ = ["PRESETS", "expand_preset"]

_DEIT_MIX = {"mix": "both", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    # CIFAR CNNs: RandomCrop(32, padding=4) + horizontal flip
    "cifar": {"crop": "pad", "padding": 4, "padding_mode": "zero", "flip_prob": 0.5},
    # DeiT (Touvron et al. 2021, timm's create_transform): RandomResizedCrop(0.08, 1) bicubic, flip,
    # RandAugment rand-m9-mstd0.5-inc1 (colour jitter off, as timm turns it off under auto-augment),
    # random erasing 0.25 with per-pixel noise, MixUp 0.8 / CutMix 1.0 on every view
    "deit": {"crop": "rrc", "scale": (0.08, 1.0), "interpolation": "bicubic",
             "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1, **_DEIT_MIX},
    # the DeiT recipe at CIFAR resolution (DeiT / TinyViT at 32 px): pad-crop instead of RandomResizedCrop
    "deit-cifar": {"crop": "pad", "padding": 4, "padding_mode": "zero", "interpolation": "bicubic",
                   "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1,
                   **_DEIT_MIX},
    # DeiT III's 3-Augment: RandomResizedCrop, flip, one of grayscale / solarize / blur, colour jitter 0.3
    "deit3": {"crop": "rrc", "scale": (0.08, 1.0), "interpolation": "bicubic", "three_augment": True,
              "color_jitter": (0.3, 0.3, 0.3, 0.0), **_DEIT_MIX},
}


def expand_preset(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Split view overrides into (the preset's settings, the explicit ones, the preset's name)."""
    explicit = {k: v for k, v in (overrides or {}).items() if k != "preset" and v is not None}
    name = (overrides or {}).get("preset")
    if name is None:
        return {}, explicit, None
    if name not in PRESETS:
        raise ConfigError(f"unknown view `preset` {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name]), explicit, name
