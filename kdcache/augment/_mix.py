"""MixUp and CutMix between a sample and a partner drawn from the whole dataset.

The partner's view is built like the sample's, from its own recorded crop, flip and per-sample ops.

torchvision's batch transforms pair a sample with its neighbour in the batch, which
makes the result depend on batching. Here the partner is drawn per view (an index in
the dataset) from the view's own seeded stream, and λ and the CutMix box come from
torchvision v2's ``MixUp.make_params`` / ``CutMix.make_params`` so their distributions
are torchvision's. Like the crop sampler, this must run inside ``seeded_stream``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import v2

from kdcache.augment._ops import CropSampler, check_hw
from kdcache.augment._params import MIX_CUTMIX, MIX_MIXUP, MIX_NONE, ViewParams
from kdcache.augment._spec import ViewSpec
from kdcache.errors import ConfigError, DataError

__all__ = ["MixSampler", "mix_float", "require_partner_source"]


def _f32(value: float) -> float:
    # The cache stores λ as float32; rounding here makes the sampled and the replayed λ identical.
    return float(np.float32(value))


class MixSampler:
    """Draws whether and how a view is mixed: kind, partner, partner's crop and flip, λ, box."""

    def __init__(self, spec: ViewSpec, crops: CropSampler, draw_ops: Callable[[], dict] = dict) -> None:
        self.spec = spec
        self._crops = crops
        self._draw_ops = draw_ops  # the partner's own per-sample ops, drawn after its crop and flip
        self._mixup = v2.MixUp(alpha=spec.mixup_alpha)
        self._cutmix = v2.CutMix(alpha=spec.cutmix_alpha)

    def sample(
        self, base: ViewParams, *, num_samples: int, size_of: Callable[[int], tuple[int, int]]
    ) -> ViewParams:
        """``base`` (crop and flip of the sample itself) extended with mixing parameters."""
        # Every decision consumes its draw even when its outcome is fixed, so the stream
        # layout (and hence the partner for a given seed) depends only on spec.mix.
        if not torch.rand(1).item() < self.spec.mix_prob:
            return base
        if self.spec.mix == "both":
            kind = MIX_MIXUP if torch.rand(1).item() < 0.5 else MIX_CUTMIX
        else:
            kind = MIX_MIXUP if self.spec.mix == "mixup" else MIX_CUTMIX
        # The partner may be the sample itself (probability 1/num_samples), as in batch MixUp.
        partner = int(torch.randint(num_samples, (1,)).item())
        partner_hw = check_hw(size_of(partner), f"size_of({partner})")
        partner_crop = self._crops.crop(partner_hw)
        partner_flip = self._crops.flip()
        partner_ops = self._draw_ops()

        if kind == MIX_MIXUP:
            lam, box = self._mixup.make_params([])["lam"], (0, 0, 0, 0)
        else:
            size = self.spec.size
            # CutMix.make_params asks only for the (output) size, as RandomResizedCrop does.
            p = self._cutmix.make_params([torch.zeros(()).expand(1, size, size)])
            x1, y1, x2, y2 = (int(v) for v in p["box"])
            lam, box = p["lam_adjusted"], (y1, x1, y2, x2)
        return ViewParams(
            crop=base.crop,
            flip=base.flip,
            ops=base.ops,
            partner_ops=partner_ops,
            mix_kind=kind,
            partner=partner,
            partner_crop=partner_crop,
            partner_flip=partner_flip,
            lam=_f32(lam),
            box=box,
        )


def mix_float(x: torch.Tensor, partner: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """Blend two float views in [0, 1].

    MixUp: ``lam * x + (1 - lam) * partner``; CutMix: ``box`` is pasted from ``partner``.
    """
    if params.mix_kind == MIX_NONE:
        return x
    if params.mix_kind == MIX_MIXUP:
        return x.mul(params.lam).add_(partner.mul(1.0 - params.lam))
    y0, x0, y1, x1 = params.box
    size = x.shape[-1]
    if not (0 <= y0 <= y1 <= size and 0 <= x0 <= x1 <= size):
        raise DataError(f"CutMix box (y0, x0, y1, x1)={params.box} does not fit a {size}x{size} view")
    out = x.clone()
    out[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]
    return out


def require_partner_source(
    num_samples: int | None, size_of: Callable[[int], tuple[int, int]] | None, spec: ViewSpec
) -> int:
    """Validate what a mixed spec needs to draw a partner; returns ``num_samples``."""
    if num_samples is None or size_of is None:
        raise ConfigError(
            f"mix={spec.mix!r} needs num_samples and size_of to draw a partner; "
            f"got num_samples={num_samples!r}, size_of={size_of!r}"
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    return num_samples
