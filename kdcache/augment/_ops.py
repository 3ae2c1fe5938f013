"""The per-sample geometric ops: the crop (random resized crop, or pad-crop) and horizontal flip.

RandomResizedCrop sampling reuses torchvision v2's own ``RandomResizedCrop.make_params`` so the crop
distribution is exactly torchvision's. Pad-crop (``crop="pad"``, CIFAR's ``RandomCrop(32, padding=4)``)
resizes the shorter side to ``crop_resize`` (default: the view size) when it differs, pads by ``padding`` on every side and draws the
offsets of a size x size crop uniformly (``torch.randint`` per axis, as ``RandomCrop`` does); its recorded
crop is (top, left, size, size) in the padded image. Applying uses the v2 functional kernels. The samplers
draw from torch's global CPU generator and must run inside :func:`kdcache.augment._seeding.seeded_stream`.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kdcache.augment._spec import ViewSpec
from kdcache.errors import DataError

__all__ = ["CropSampler", "check_hw", "check_image", "crop_flip", "crop_flip_float", "pad_canvas"]

_PAD_MODE = {"zero": "constant", "reflect": "reflect", "edge": "edge", "symmetric": "symmetric"}


def _resized_hw(spec: ViewSpec, hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after pad-crop's resize: the shorter side to ``spec.pad_resize`` (torchvision's resize rule)."""
    h, w = hw
    short, long = (h, w) if h <= w else (w, h)
    r = spec.pad_resize
    if short == r:
        return h, w
    new_long = int(r * long / short)
    return (r, new_long) if h <= w else (new_long, r)


def pad_canvas(spec: ViewSpec, hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the padded image a pad-crop is taken from."""
    h, w = _resized_hw(spec, hw)
    return h + 2 * spec.padding, w + 2 * spec.padding


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
        if self.spec.crop == "pad":
            H, W = pad_canvas(self.spec, image_hw)
            s = self.spec.size
            top = int(torch.randint(0, H - s + 1, size=(1,)))
            left = int(torch.randint(0, W - s + 1, size=(1,)))
            return top, left, s, s
        h, w = image_hw
        # make_params only asks the input for its size (query_size); a stride-0 view reports
        # (1, h, w) without allocating an image.
        stand_in = torch.zeros(()).expand(1, h, w)
        p = self._rrc.make_params([stand_in])
        return int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"])

    def flip(self) -> bool:
        """Flip decision; always consumes exactly one draw so later draws do not depend on flip_prob."""
        return bool(torch.rand(1).item() < self.spec.flip_prob)


def _fit_error(crop, what: str, H: int, W: int, where: str = "") -> DataError:
    # torchvision would silently zero-pad; outside the image means the parameters belong to other data.
    return DataError(f"crop (top, left, height, width)={tuple(crop)} does not fit the {what} of size "
                     f"{H}x{W}{where}; the parameters were recorded for a different image")


def crop_flip(spec: ViewSpec, image: torch.Tensor, crop: tuple[int, int, int, int], flip: bool,
              what: str = "image") -> torch.Tensor:
    """The crop (resized crop, or resize-pad-crop) then horizontal_flip: a uint8 (3, size, size) view."""
    image = check_image(image, what)
    top, left, height, width = crop
    H, W = image.shape[-2:]
    if spec.crop == "pad":
        s = spec.size
        PH, PW = pad_canvas(spec, (H, W))
        if (height, width) != (s, s) or top < 0 or left < 0 or top + s > PH or left + s > PW:
            raise _fit_error(crop, what, H, W, f" padded to {PH}x{PW}")
        x = image
        if min(H, W) != spec.pad_resize:
            x = F.resize(x, [spec.pad_resize], interpolation=spec.interpolation, antialias=spec.antialias)
        if spec.padding:
            x = F.pad(x, [spec.padding], fill=0, padding_mode=_PAD_MODE[spec.padding_mode])
        x = F.crop(x, top, left, s, s)
    else:
        if height < 1 or width < 1 or top < 0 or left < 0 or top + height > H or left + width > W:
            raise _fit_error(crop, what, H, W)
        x = F.resized_crop(image, top, left, height, width, size=[spec.size, spec.size],
                           interpolation=spec.interpolation, antialias=spec.antialias)
    return F.horizontal_flip(x) if flip else x


def crop_flip_float(
    spec: ViewSpec, image: torch.Tensor, crop: tuple[int, int, int, int], flip: bool, what: str = "image"
) -> torch.Tensor:
    """crop_flip (uint8) -> to_dtype(float32, scale=True): a view in [0, 1]."""
    return F.to_dtype(crop_flip(spec, image, crop, flip, what), torch.float32, scale=True)
