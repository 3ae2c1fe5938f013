"""The ``auto_augment`` setting: parsing timm's RandAugment string and the policy names (no op code here).

:class:`~kdcache.augment._spec.ViewSpec` validates its ``auto_augment`` with :func:`parse_auto_augment`; the op
that samples and applies the policy (:mod:`kdcache.augment._autoaug`) reads the same config, so the two agree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from kdcache.errors import ConfigError

__all__ = ["RAND_INCREASING_OPS", "RAND_OPS", "AutoAugmentConfig", "parse_auto_augment"]

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in timm's order.
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@dataclass(frozen=True)
class AutoAugmentConfig:
    """A parsed ``auto_augment`` setting; ``slots`` = parameters recorded per view."""

    policy: str                      # "rand" | "trivialaugment" | "autoaugment"
    m: float = 9.0
    n: int = 2
    mstd: float = 0.0
    mmax: float = 10.0
    increasing: bool = False
    prob: float = 0.5

    @property
    def slots(self) -> int:
        return {"rand": self.n, "trivialaugment": 1, "autoaugment": 2}[self.policy]

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_auto_augment(text: str) -> AutoAugmentConfig | None:
    """``none`` -> None; ``trivialaugment``, ``autoaugment``; or timm's ``rand-m9-n2-mstd0.5-inc1-mmax10-p0.5``."""
    if text == "none":
        return None
    if text in ("trivialaugment", "autoaugment"):
        return AutoAugmentConfig(policy=text)
    parts = text.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"ViewSpec.auto_augment {text!r} is not none, trivialaugment, autoaugment or a timm "
                          "RandAugment string such as rand-m9-mstd0.5-inc1")
    kw: dict[str, Any] = {}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", part)
        if m is None:
            raise ConfigError(f"ViewSpec.auto_augment {text!r}: unknown or malformed RandAugment section {part!r} "
                              "(known: m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>, p<probability>)")
        key, val = m.group(1), float(m.group(2))
        if key == "mstd":
            kw["mstd"] = math.inf if val > 100 else val  # timm: mstd > 100 means uniform in [0, m]
        elif key == "inc":
            kw["increasing"] = bool(val)
        elif key == "n":
            if val != int(val) or not 1 <= val <= 16:
                raise ConfigError(f"ViewSpec.auto_augment {text!r}: n must be an integer in [1, 16]")
            kw["n"] = int(val)
        elif key == "p":
            if not 0.0 <= val <= 1.0:
                raise ConfigError(f"ViewSpec.auto_augment {text!r}: p must lie in [0, 1]")
            kw["prob"] = val
        else:
            kw[key] = val
    cfg = AutoAugmentConfig(policy="rand", **kw)
    if not 0.0 <= cfg.m <= cfg.mmax:
        raise ConfigError(f"ViewSpec.auto_augment {text!r}: magnitude m must lie in [0, mmax={cfg.mmax:g}]")
    return cfg
