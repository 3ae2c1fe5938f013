"""``ViewPipeline``: sample a view's parameters from a seed, and apply recorded parameters to an image.

The teacher dump and the student trainer use the same pipeline object, so sampling and
replay cannot drift apart: :meth:`ViewPipeline.make_params` is the only place that
draws randomness and :meth:`ViewPipeline.apply` the only place that turns parameters
into pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from kdcache.augment import _params
from kdcache.augment._describe import describe_spec
from kdcache.augment._mix import MixSampler, mix_float, require_partner_source
from kdcache.augment._oplist import build_ops
from kdcache.augment._ops import CropSampler, check_hw, check_image, crop_flip
from kdcache.augment._params import ViewParams
from kdcache.augment._seeding import seeded_stream
from kdcache.augment._spec import ViewSpec
from kdcache.errors import ConfigError

__all__ = ["ViewPipeline"]


class ViewPipeline:
    """Replayable training views and the evaluation view.

    A training view: crop (resized crop or pad-crop) and flip on the uint8 image, the spec's uint8 ops
    (auto-augment, 3-Augment, colour jitter), float32 in [0, 1], its float ops (random erasing), then an
    optional MixUp/CutMix with a partner built the same way from its own recorded parameters, then
    normalisation."""

    def __init__(self, spec: ViewSpec) -> None:
        if not isinstance(spec, ViewSpec):
            raise ConfigError(f"ViewPipeline needs a ViewSpec, got {spec!r}")
        self.spec = spec
        self._crops = CropSampler(spec)
        self.ops = build_ops(spec)
        self._mix = MixSampler(spec, self._crops, self._draw_ops) if spec.is_mixed else None

    def _draw_ops(self) -> dict:
        params: dict = {}
        for op in self.ops:
            params.update(op.make_params())
        return params

    def _sample_view(self, image: torch.Tensor, crop, flip: bool, ops, what: str) -> torch.Tensor:
        """One sample's view before mixing: float32 (3, size, size) in [0, 1] (erased boxes in mean/std units)."""
        x = crop_flip(self.spec, image, crop, flip, what)
        for op in self.ops:
            if op.stage == "uint8":
                x = op.apply(x, ops)
        x = F.to_dtype(x, torch.float32, scale=True)
        for op in self.ops:
            if op.stage == "float":
                x = op.apply(x, ops)
        return x

    def __repr__(self) -> str:
        return f"ViewPipeline({self.spec!r})"

    def make_params(
        self,
        seed: int,
        image_hw: tuple[int, int],
        *,
        num_samples: int | None = None,
        size_of: Callable[[int], tuple[int, int]] | None = None,
    ) -> ViewParams:
        """Draw one view's parameters; all randomness comes from ``seed`` (see ``derive_view_seed``).

        Mixed specs need ``num_samples`` (partners are drawn from ``[0, num_samples)``) and
        ``size_of(index) -> (H, W)`` for the partner's crop; they are required even when this
        particular view ends up unmixed, so a missing argument fails on the first call.
        Torch's global RNG state is the same before and after the call.
        """
        hw = check_hw(image_hw)
        if self._mix is not None:
            num_samples = require_partner_source(num_samples, size_of, self.spec)
        with seeded_stream(seed):
            # Draw order is part of the format: crop, flip, the ops in order, then (mixed specs) the mix draws.
            crop, flip = self._crops.crop(hw), self._crops.flip()
            base = ViewParams(crop=crop, flip=flip, ops=self._draw_ops())
            if self._mix is None:
                return base
            return self._mix.sample(base, num_samples=num_samples, size_of=size_of)  # type: ignore[arg-type]

    def apply(
        self, image: torch.Tensor, params: ViewParams, partner_image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rebuild a view: uint8 (3, H, W) -> float32 (3, size, size), normalised.

        For mixed params ``partner_image`` must be the uint8 image of dataset sample
        ``params.partner``; it is ignored for unmixed params. Same inputs, same bits.
        """
        if params.is_mixed and partner_image is None:
            raise ConfigError(
                f"this view is mixed with sample {params.partner} (mix_kind={params.mix_kind}); "
                "pass its image as partner_image"
            )
        x = self._sample_view(image, params.crop, params.flip, params.ops, "image")
        if params.is_mixed:
            xp = self._sample_view(partner_image, params.partner_crop, params.partner_flip, params.partner_ops,
                                   "partner image")
            x = mix_float(x, xp, params)
        return F.normalize(x, mean=list(self.spec.mean), std=list(self.spec.std))

    def eval_view(self, image: torch.Tensor) -> torch.Tensor:
        """Evaluation view: shorter side resized to ``spec.eval_resize`` if needed, centre crop, normalise."""
        image = check_image(image)
        size, resize = self.spec.size, self.spec.eval_resize
        if min(image.shape[-2:]) != resize:
            image = F.resize(
                image, [resize], interpolation=self.spec.interpolation, antialias=self.spec.antialias
            )
        x = F.center_crop(image, [size, size])
        x = F.to_dtype(x, torch.float32, scale=True)
        return F.normalize(x, mean=list(self.spec.mean), std=list(self.spec.std))

    def params_to_arrays(self, params: Sequence[ViewParams]) -> dict[str, np.ndarray]:
        """Stack parameters into the cache arrays named by :func:`param_array_specs` (first axis = view)."""
        return _params.params_to_arrays(self.spec, params)

    def params_from_arrays(self, arrays: Mapping[str, np.ndarray], i: int) -> ViewParams:
        """Row ``i`` of the cache arrays as :class:`ViewParams`; exact inverse of :meth:`params_to_arrays`."""
        return _params.params_from_arrays(self.spec, arrays, i)

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Same as ``param_array_specs(self.spec)``."""
        return _params.param_array_specs(self.spec)

    def describe(self) -> dict:
        """:func:`~kdcache.augment._describe.describe_spec` of this pipeline's spec."""
        return describe_spec(self.spec)
