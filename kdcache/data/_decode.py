"""Image decoding shared by the file-based sources (``folder:``, ``hfds:``, ``wds:``): Pillow to RGB uint8.

Decoded pixels are part of a view, so every source decodes the same way: ``PIL.Image.open`` then
``convert("RGB")`` (grey, palette, RGBA, CMYK and grey+alpha become RGB; alpha is dropped), except
16-bit greyscale, which keeps its high byte (``value >> 8``, as ``torchvision``'s ``to_dtype``
scales uint16 to uint8). EXIF orientation is not applied. For JPEG and PNG files these are the
pixels ``torchvision.io.decode_image(..., ImageReadMode.RGB)`` gave (kdcache's decoder before
torchvision deprecated it; ``tests/data/test_decode.py`` checks the two agree), so caches made
with it replay unchanged. The decoder's name is recorded in a dataset's description as
:data:`DECODER`.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from kdcache.errors import DataError

__all__ = ["DECODER", "decode_image_bytes", "decode_image_file", "image_header_size"]

DECODER = "pillow-rgb8"


def _to_tensor(im) -> torch.Tensor:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im)
        a = (a.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8) if im.mode != "I" else \
            (a.astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        a = np.repeat(a[:, :, None], 3, axis=2)
    else:
        a = np.asarray(im.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _decode(fp, where: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fp) as im:
            im.load()
            return _to_tensor(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot decode image {where}: {reason}; replace or delete the file") from e


def decode_image_file(path: str | os.PathLike[str]) -> torch.Tensor:
    """The uint8 (3, H, W) RGB pixels of the image file ``path`` (raises DataError naming it)."""
    return _decode(os.fspath(path), os.fspath(path))


def decode_image_bytes(data: bytes, where: str) -> torch.Tensor:
    """The uint8 (3, H, W) RGB pixels of an encoded image held in memory; ``where`` names it in errors."""
    return _decode(io.BytesIO(data), where)


def image_header_size(fp, where: str) -> tuple[int, int]:
    """(H, W) from the image header only (a path or a binary file object)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fp) as im:
            return int(im.height), int(im.width)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {where}: {e}; replace or delete the file") from e
