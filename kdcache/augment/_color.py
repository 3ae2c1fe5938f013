"""Colour ops, replayable: torchvision's ColorJitter and DeiT III's 3-Augment.

ColorJitter draws with torchvision v2's own ``ColorJitter.make_params`` (a random order of the four adjustments
and a factor for each one that is on); a view records the order and the factors (float32, the value the kernel
receives). 3-Augment (DeiT III, ``new_data_aug_generator``) picks one of grayscale, solarize (threshold 128) and
Gaussian blur (sigma uniform in [0.1, 2.0]) per view; it records the choice and sigma.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kdcache.augment._op import ViewOp, f32

__all__ = ["ColorJitterOp", "ThreeAugmentOp", "blur_kernel_size"]

_ADJUST = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
# neutral factor of each adjustment (recorded for adjustments that are off)
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)


class ColorJitterOp(ViewOp):
    """ColorJitter(brightness, contrast, saturation, hue) on the uint8 view."""

    name = "color_jitter"
    stage = "uint8"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        b, c, s, h = spec.color_jitter
        self.on = tuple(v > 0 for v in spec.color_jitter)
        self._jitter = v2.ColorJitter(brightness=b or None, contrast=c or None, saturation=s or None,
                                      hue=h or None)

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"jitter_order": ((4,), "int8"), "jitter_factor": ((4,), "float32")}

    def make_params(self) -> dict[str, Any]:
        p = self._jitter.make_params([])
        keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        factors = [f32(p[k]) if p[k] is not None else n for k, n in zip(keys, _NEUTRAL)]
        return {"jitter_order": [int(i) for i in p["fn_idx"]], "jitter_factor": factors}

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:
        factors = params["jitter_factor"]
        for fn_id in params["jitter_order"]:
            fn_id = int(fn_id)
            if self.on[fn_id]:
                x = _ADJUST[fn_id](x, float(factors[fn_id]))
        return x

    def describe(self) -> dict[str, Any]:
        return {
            "name": "color_jitter",
            "settings": {"brightness": self.spec.color_jitter[0], "contrast": self.spec.color_jitter[1],
                         "saturation": self.spec.color_jitter[2], "hue": self.spec.color_jitter[3]},
            "recorded": ["jitter_order", "jitter_factor"],
            "apply": ("for fn in jitter_order[i] (0 brightness, 1 contrast, 2 saturation, 3 hue), for each "
                      "adjustment whose setting is > 0: x = F.adjust_brightness / adjust_contrast / "
                      "adjust_saturation / adjust_hue(x, jitter_factor[i, fn]) on the uint8 view."),
            "sampled_by": "torchvision.transforms.v2.ColorJitter(...).make_params",
        }


THREE_GRAY, THREE_SOLARIZE, THREE_BLUR = 0, 1, 2


def blur_kernel_size(sigma: float, size: int) -> int:
    """Odd kernel covering 3 sigma each side, capped below the view size (reflect padding needs it)."""
    k = 2 * math.ceil(3 * sigma) + 1
    cap = size - 1 if size % 2 == 0 else size - 2
    return max(1, min(k, cap))


class ThreeAugmentOp(ViewOp):
    """DeiT III's 3-Augment: grayscale | solarize | Gaussian blur, one per view."""

    name = "three_augment"
    stage = "uint8"

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"three_aug": ((), "int8"), "three_aug_sigma": ((), "float32")}

    def make_params(self) -> dict[str, Any]:
        choice = int(torch.randint(3, ()))
        sigma = f32(torch.empty(()).uniform_(0.1, 2.0).item())  # drawn for every view: a fixed stream layout
        return {"three_aug": choice, "three_aug_sigma": sigma if choice == THREE_BLUR else 0.0}

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:
        choice = int(params["three_aug"])
        if choice == THREE_GRAY:
            return F.rgb_to_grayscale(x, num_output_channels=3)
        if choice == THREE_SOLARIZE:
            return F.solarize(x, threshold=128.0)
        sigma = float(params["three_aug_sigma"])
        k = blur_kernel_size(sigma, x.shape[-1])
        return F.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])

    def describe(self) -> dict[str, Any]:
        return {
            "name": "three_augment",
            "settings": {},
            "recorded": ["three_aug", "three_aug_sigma"],
            "apply": ("three_aug[i] 0: x = F.rgb_to_grayscale(x, num_output_channels=3); 1: x = F.solarize(x, "
                      "threshold=128.0); 2: s = three_aug_sigma[i], k = min(2 * ceil(3 s) + 1, the largest odd "
                      "number below the view size), x = F.gaussian_blur(x, kernel_size=[k, k], sigma=[s, s])."),
            "sampled_by": "choice = torch.randint(3, ()); sigma = torch.empty(()).uniform_(0.1, 2.0) (DeiT III)",
        }
