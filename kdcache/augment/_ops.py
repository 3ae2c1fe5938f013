"""The per-sample geometric ops: random resized crop and horizontal flip.

Sampling reuses torchvision v2's own ``RandomResizedCrop.make_params`` so the crop
distribution is exactly torchvision's; applying uses the v2 functional kernels. The
samplers draw from torch's global CPU generator and must run inside
:func:`kdcache.augment._seeding.seeded_stream`.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kdcache.augment._spec import ViewSpec
from kdcache.errors import DataError

__all__ = ["CropSampler", "check_hw", "check_image", "crop_flip_float"]


def check_hw(image_hw: object, what: str = "image size") -> tuple[int, int]:
    """``image_hw`` as two positive ints, or a :class:`DataError` quoting it."""
    try:
        h, w = (int(v) for v in image_hw)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise DataError(f"{what} must be (height, width), got {image_hw!r}") from None
    if h < 1 or w < 1:
        raise DataError(f"{what} must be positive, got {image_hw!r}")
    return h, w


def check_image(image: object, what: str = "image") -> torch.Tensor:
    """Reject anything but a uint8 (3, H, W) tensor: the pipeline's rounding is defined for uint8 input."""
    if (
        not isinstance(image, torch.Tensor)
        or image.dtype != torch.uint8
        or image.ndim != 3
        or image.shape[0] != 3
    ):
        desc = (
            f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        )
        raise DataError(f"{what} must be a uint8 tensor of shape (3, H, W), got {desc}")
    return image


class CropSampler:
    """Draws RandomResizedCrop boxes and flip decisions for a spec."""

    def __init__(self, spec: ViewSpec) -> None:
        self.spec = spec
        self._rrc = v2.RandomResizedCrop(
            spec.size,
            scale=spec.scale,
            ratio=spec.ratio,
            interpolation=spec.interpolation,
            antialias=spec.antialias,
        )

    def crop(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, height, width) for an image of ``image_hw``, from the current global stream."""
        h, w = image_hw
        # make_params only asks the input for its size (query_size); a stride-0 view reports
        # (1, h, w) without allocating an image.
        stand_in = torch.zeros(()).expand(1, h, w)
        p = self._rrc.make_params([stand_in])
        return int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"])

    def flip(self) -> bool:
        """Flip decision; always consumes exactly one draw so later draws do not depend on flip_prob."""
        return bool(torch.rand(1).item() < self.spec.flip_prob)


def crop_flip_float(
    spec: ViewSpec, image: torch.Tensor, crop: tuple[int, int, int, int], flip: bool, what: str = "image"
) -> torch.Tensor:
    """resized_crop (uint8) -> horizontal_flip -> to_dtype(float32, scale=True): a view in [0, 1]."""
    image = check_image(image, what)
    top, left, height, width = crop
    H, W = image.shape[-2:]
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > H or left + width > W:
        # torchvision would silently zero-pad; outside the image means the parameters belong to other data.
        raise DataError(
            f"crop (top, left, height, width)={tuple(crop)} does not fit the {what} of size {H}x{W}; "
            "the parameters were recorded for a different image"
        )
    x = F.resized_crop(
        image,
        top,
        left,
        height,
        width,
        size=[spec.size, spec.size],
        interpolation=spec.interpolation,
        antialias=spec.antialias,
    )
    if flip:
        x = F.horizontal_flip(x)
    return F.to_dtype(x, torch.float32, scale=True)
