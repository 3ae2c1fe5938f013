"""Auto-augment ops, replayable: timm's RandAugment, torchvision's TrivialAugmentWide and AutoAugment (ImageNet).

One op family with one kernel table. A view records per slot the kernel's index in :data:`KERNELS` (-1: the
slot was skipped) and the final, signed argument the kernel receives (rotation and shear in degrees,
translation in whole pixels, enhancement factors, posterize bits, solarize threshold, solarize-add amount),
so replay never re-derives an argument from a magnitude. Sampling follows each policy's definition:

* ``rand-…`` (timm's ``rand_augment_transform`` config string): ``n`` ops drawn uniformly with replacement from
  timm's 15 ops (``inc1``: the increasing-severity variants), each applied with probability ``p`` (0.5), at
  magnitude ``m`` (``mstd`` > 0: Gaussian around ``m``; ``mstd`` > 100: uniform in [0, m]) clipped to [0, mmax],
  turned into an argument by timm's level functions (signed ops negated with probability 1/2). Geometric ops
  fill with the mean colour, as timm's ``create_transform`` sets them, and interpolate bilinearly (nearest for
  nearest views: torchvision's tensor kernels have no bicubic rotate or affine).
* ``trivialaugment`` / ``autoaugment``: torchvision v2's own augmentation spaces and policies, drawn with the
  same calls in the same order as ``TrivialAugmentWide.forward`` / ``AutoAugment.forward`` (nearest
  interpolation, fill 0: torchvision's defaults), so a seeded stream gives torchvision's own choice.

Every kernel is a ``torchvision.transforms.v2.functional`` call on the uint8 view, except SolarizeAdd (timm's
lookup table: pixels below 128 get ``arg`` added, clipped at 255), which torchvision lacks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kdcache.augment._autoaug_config import parse_auto_augment
from kdcache.augment._op import ViewOp, f32
from kdcache.errors import ConfigError

__all__ = ["KERNELS", "AutoAugmentOp", "apply_kernel"]

KERNELS = ("Identity", "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
           "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
_KERNEL_ID = {n: i for i, n in enumerate(KERNELS)}
SKIPPED = -1

_LEVEL_DENOM = 10.0
_TRANSLATE_PCT = 0.45  # timm's default hparams translate_pct


def apply_kernel(x: torch.Tensor, op: int, arg: float, *, interpolation: str, fill: list[float] | None
                 ) -> torch.Tensor:
    """Kernel ``KERNELS[op]`` with its recorded argument on a uint8 (3, H, W) view."""
    name = KERNELS[op]
    if name == "Identity":
        return x
    if name == "AutoContrast":
        return F.autocontrast(x)
    if name == "Equalize":
        return F.equalize(x)
    if name == "Invert":
        return F.invert(x)
    if name == "Rotate":
        return F.rotate(x, angle=arg, interpolation=interpolation, fill=fill)
    if name == "Posterize":
        return F.posterize(x, bits=int(arg))
    if name == "Solarize":
        # a threshold above 255 (timm's level 0 of SolarizeIncreasing: 256) inverts nothing
        return F.solarize(x, threshold=arg) if arg <= 255 else x
    if name == "SolarizeAdd":
        return torch.where(x < 128, (x.to(torch.int16) + int(arg)).clamp_(0, 255).to(torch.uint8), x)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        fn = {"Color": F.adjust_saturation, "Contrast": F.adjust_contrast, "Brightness": F.adjust_brightness,
              "Sharpness": F.adjust_sharpness}[name]
        return fn(x, arg)
    if name in ("ShearX", "ShearY"):
        shear = [arg, 0.0] if name == "ShearX" else [0.0, arg]
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=interpolation,
                        fill=fill, center=[0, 0])
    t = [int(arg), 0] if name == "TranslateX" else [0, int(arg)]
    return F.affine(x, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0], interpolation=interpolation, fill=fill)


def _signed(v: float) -> float:
    # timm's _randomly_negate
    return -v if torch.rand(()).item() > 0.5 else v


def _rand_arg(op: str, level: float, size: int) -> tuple[str, float]:
    """timm's level-to-argument functions: (kernel name, final argument) for a magnitude ``level``."""
    r = level / _LEVEL_DENOM
    if op in ("AutoContrast", "Equalize", "Invert"):
        return op, 0.0
    if op == "Rotate":
        return op, _signed(r * 30.0)
    if op == "Posterize":
        return op, float(int(r * 4))
    if op == "PosterizeIncreasing":
        return "Posterize", float(4 - int(r * 4))
    if op == "Solarize":
        return op, float(min(256, int(r * 256)))
    if op == "SolarizeIncreasing":
        return "Solarize", float(256 - min(256, int(r * 256)))
    if op == "SolarizeAdd":
        return op, float(min(128, int(r * 110)))
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return op, r * 1.8 + 0.1
    if op.endswith("Increasing"):
        return op[: -len("Increasing")], max(0.1, 1.0 + _signed(r * 0.9))
    if op in ("ShearX", "ShearY"):
        return op, math.degrees(math.atan(_signed(r * 0.3)))
    # TranslateXRel / TranslateYRel: a fraction of the (square) view, in whole pixels
    return op[: -len("Rel")], float(round(_signed(r * _TRANSLATE_PCT) * size))


def _torchvision_arg(name: str, magnitude: float) -> float:
    """The argument torchvision's ``_apply_image_or_video_transform`` hands its kernel for ``magnitude``."""
    if name in ("ShearX", "ShearY"):
        return math.degrees(math.atan(magnitude))
    if name in ("TranslateX", "TranslateY", "Posterize"):
        return float(int(magnitude))
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 1.0 + magnitude
    if name == "Solarize":
        return 255.0 * magnitude  # uint8 views: torchvision scales the threshold by the dtype's maximum
    return magnitude


class AutoAugmentOp(ViewOp):
    """RandAugment (timm), TrivialAugmentWide or AutoAugment (torchvision) on the uint8 view."""

    name = "auto_augment"
    stage = "uint8"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        cfg = parse_auto_augment(spec.auto_augment)
        if cfg is None:
            raise ConfigError("AutoAugmentOp needs ViewSpec.auto_augment")
        self.cfg = cfg
        if cfg.policy == "rand":
            # torchvision's tensor rotate/affine know nearest and bilinear only: bicubic views rotate bilinearly
            self.interpolation = "nearest" if spec.interpolation == "nearest" else "bilinear"
            self.fill: list[float] | None = [float(min(255, round(255 * m))) for m in spec.mean]
        else:
            self.interpolation, self.fill = "nearest", None
            if cfg.policy == "trivialaugment":
                self._space = v2.TrivialAugmentWide._AUGMENTATION_SPACE
            else:
                self._space = v2.AutoAugment._AUGMENTATION_SPACE
                self._policies = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)._policies

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"aa_op": ((self.cfg.slots,), "int8"), "aa_arg": ((self.cfg.slots,), "float32")}

    def make_params(self) -> dict[str, Any]:
        s = self.spec.size
        if self.cfg.policy == "rand":
            slots = self._rand_slots(s)
        elif self.cfg.policy == "trivialaugment":
            keys = tuple(self._space)
            name = keys[int(torch.randint(len(keys), ()))]
            slots = [self._torchvision_slot(name, None, 31)]
        else:
            policy = self._policies[int(torch.randint(len(self._policies), ()))]
            slots = []
            for name, prob, idx in policy:
                if not torch.rand(()) <= prob:
                    slots.append((SKIPPED, 0.0))
                    continue
                slots.append(self._torchvision_slot(name, idx, 10))
        return {"aa_op": [op for op, _ in slots], "aa_arg": [f32(a) for _, a in slots]}

    def _rand_slots(self, size: int) -> list[tuple[int, float]]:
        c = self.cfg
        picks = torch.randint(len(c.ops), (c.n,)).tolist()
        out = []
        for k in picks:
            if torch.rand(()).item() > c.prob:
                out.append((SKIPPED, 0.0))
                continue
            level = c.m
            if c.mstd == math.inf:
                level = torch.rand(()).item() * c.m
            elif c.mstd > 0:
                level = c.m + c.mstd * torch.randn(()).item()
            level = max(0.0, min(level, c.mmax))
            name, arg = _rand_arg(c.ops[k], level, size)
            out.append((_KERNEL_ID[name], arg))
        return out

    def _torchvision_slot(self, name: str, idx: int | None, bins: int) -> tuple[int, float]:
        fn, signed = self._space[name]
        magnitudes = fn(bins, self.spec.size, self.spec.size)
        if magnitudes is None:
            return _KERNEL_ID[name], 0.0
        magnitude = float(magnitudes[int(torch.randint(bins, ())) if idx is None else idx])
        if signed and torch.rand(()) <= 0.5:
            magnitude *= -1
        return _KERNEL_ID[name], _torchvision_arg(name, magnitude)

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:
        for op, arg in zip(params["aa_op"], params["aa_arg"]):
            if op != SKIPPED:
                x = apply_kernel(x, int(op), float(arg), interpolation=self.interpolation, fill=self.fill)
        return x

    def describe(self) -> dict[str, Any]:
        return {
            "name": "auto_augment",
            "settings": {"auto_augment": self.spec.auto_augment, "policy": self.cfg.policy, "slots": self.cfg.slots,
                         "interpolation": self.interpolation, "fill": self.fill,
                         "kernels": list(KERNELS)},
            "recorded": ["aa_op", "aa_arg"],
            "apply": (
                "for each slot j in order: op = aa_op[i, j]; if op == -1 skip; else x = kernel KERNELS[op] on the "
                "uint8 view with argument a = aa_arg[i, j]: Identity: x; AutoContrast/Equalize/Invert: "
                "F.autocontrast/F.equalize/F.invert(x); Rotate: F.rotate(x, angle=a, interpolation, fill); "
                "Posterize: F.posterize(x, bits=int(a)); Solarize: F.solarize(x, threshold=a) if a <= 255 else x; "
                "SolarizeAdd: where(x < 128, clip(x + int(a), 0, 255), x); Color/Contrast/Brightness/Sharpness: "
                "F.adjust_saturation/adjust_contrast/adjust_brightness/adjust_sharpness(x, a); ShearX/ShearY: "
                "F.affine(x, angle=0, translate=[0, 0], scale=1, shear=[a, 0] / [0, a], interpolation, fill, "
                "center=[0, 0]); TranslateX/TranslateY: F.affine(x, angle=0, translate=[int(a), 0] / [0, int(a)], "
                "scale=1, shear=[0, 0], interpolation, fill)."),
            "sampled_by": {
                "rand": "timm's RandAugment (rand_augment_transform) with the config string above",
                "trivialaugment": "torchvision.transforms.v2.TrivialAugmentWide().forward's draws",
                "autoaugment": "torchvision.transforms.v2.AutoAugment(AutoAugmentPolicy.IMAGENET).forward's draws",
            }[self.cfg.policy],
        }
