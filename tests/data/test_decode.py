"""The Pillow decoder gives the pixels torchvision's (deprecated) ``decode_image`` gave, so caches made
with it replay unchanged; and a normal read prints no deprecation warning."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from kdcache.data._decode import DECODER, decode_image_bytes, decode_image_file, image_header_size
from kdcache.errors import DataError


def _old_decoder(data: bytes) -> torch.Tensor:
    """kdcache's decoder before the move: torchvision.io.decode_image to RGB, uint16 scaled to uint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2.functional import to_dtype

        t = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return to_dtype(t, torch.uint8, scale=True) if t.dtype != torch.uint8 else t


def _variants():
    rng = np.random.default_rng(0)
    smooth = (np.cumsum(rng.integers(0, 255, (23, 17, 3)), axis=0) // 23).astype(np.uint8)
    noisy = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    for name, a in (("smooth", smooth), ("noisy", noisy)):
        for sub in (0, 1, 2):
            for q in (60, 95):
                yield f"{name}-jpeg-sub{sub}-q{q}", Image.fromarray(a), "JPEG", dict(quality=q, subsampling=sub)
        yield f"{name}-jpeg-grey", Image.fromarray(a).convert("L"), "JPEG", {}
        yield f"{name}-jpeg-cmyk", Image.fromarray(a).convert("CMYK"), "JPEG", {}
        yield f"{name}-jpeg-progressive", Image.fromarray(a), "JPEG", dict(progressive=True)
        for mode in ("RGB", "L", "LA", "RGBA", "P"):
            yield f"{name}-png-{mode}", Image.fromarray(a).convert(mode), "PNG", {}
    deep = (rng.integers(0, 65536, (5, 7))).astype(np.uint16)
    yield "png-grey16", Image.fromarray(deep), "PNG", {}


@pytest.mark.parametrize("name,image,fmt,kw", list(_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_pillow_pixels_equal_the_old_torchvision_decoder(name, image, fmt, kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    data = buf.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = decode_image_bytes(data, name)
    old = _old_decoder(data)
    assert new.dtype == torch.uint8 and new.shape == old.shape and new.shape[0] == 3
    assert torch.equal(new, old), f"{name}: max difference {(new.int() - old.int()).abs().max()}"


def test_files_headers_and_bad_bytes(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.full((3, 5, 3), 9, dtype=np.uint8)).save(p)
    assert torch.equal(decode_image_file(p), torch.full((3, 3, 5), 9, dtype=torch.uint8))
    assert image_header_size(p, str(p)) == (3, 5)
    with pytest.raises(DataError, match=r"^cannot decode image shard-0/k\.jpg: .*; replace or delete the file$"):
        decode_image_bytes(b"\xff\xd8 not a jpeg", "shard-0/k.jpg")
    assert DECODER == "pillow-rgb8"
