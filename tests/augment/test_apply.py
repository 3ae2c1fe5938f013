"""apply / eval_view: deterministic pixels, exact replay from arrays, each op doing what it says."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from kdcache.augment import ViewParams, ViewPipeline, ViewSpec, derive_view_seed, describe_spec
from kdcache.errors import ConfigError, DataError

N = 6


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [
        torch.randint(0, 256, (3, 28 + 3 * i, 36 - 2 * i), dtype=torch.uint8, generator=g) for i in range(N)
    ]


IMAGES = _images()


def size_of(i: int) -> tuple[int, int]:
    return tuple(IMAGES[i].shape[-2:])


def _view(pipe: ViewPipeline, i: int, v: int) -> tuple[ViewParams, torch.Tensor]:
    p = pipe.make_params(derive_view_seed(11, f"img{i}", v), size_of(i), num_samples=N, size_of=size_of)
    partner = IMAGES[p.partner] if p.is_mixed else None
    return p, pipe.apply(IMAGES[i], p, partner)


def _replay_without_kdcache(spec: dict, arrays: dict, row: int, image: torch.Tensor) -> torch.Tensor:
    """Rebuild row ``row`` following describe(): torchvision and the arrays only, no kdcache code."""
    s = spec["size"]

    def base(img, crop, flip):
        t, left, h, w = (int(c) for c in crop)
        x = F.resized_crop(
            img, t, left, h, w, size=[s, s], interpolation=spec["interpolation"], antialias=spec["antialias"]
        )
        x = F.horizontal_flip(x) if flip else x
        return F.to_dtype(x, torch.float32, scale=True)

    x = base(image, arrays["crop"][row], arrays["flip"][row])
    kind = int(arrays["mix_kind"][row]) if "mix_kind" in arrays else 0
    if kind:
        partner = IMAGES[int(arrays["mix_partner"][row])]
        xp = base(partner, arrays["partner_crop"][row], arrays["partner_flip"][row])
        lam = float(arrays["mix_lam"][row])
        if kind == 1:
            x = x.mul(lam).add_(xp.mul(1 - lam))
        else:
            y0, x0, y1, x1 = (int(b) for b in arrays["mix_box"][row])
            x = x.clone()
            x[:, y0:y1, x0:x1] = xp[:, y0:y1, x0:x1]
    return F.normalize(x, mean=spec["mean"], std=spec["std"])


@pytest.mark.parametrize(
    "spec",
    [
        ViewSpec(size=20),
        ViewSpec(size=16, interpolation="bicubic", mix="mixup"),
        ViewSpec(size=16, interpolation="nearest", mix="cutmix", antialias=False),
        ViewSpec(size=20, mix="both", mix_prob=0.6),
    ],
)
def test_replay_from_arrays_is_bit_identical(spec):
    pipe = ViewPipeline(spec)
    jobs = [(i, v) for i in range(N) for v in range(3)]
    sampled = [_view(pipe, i, v) for i, v in jobs]
    arrays = pipe.params_to_arrays([p for p, _ in sampled])
    # A new pipeline built from the stored spec dict, as a student would.
    replay = ViewPipeline(ViewSpec.from_dict(spec.to_dict()))
    for row, ((i, _), (p, view)) in enumerate(zip(jobs, sampled)):
        assert view.shape == (3, spec.size, spec.size) and view.dtype == torch.float32
        q = replay.params_from_arrays(arrays, row)
        assert q == p
        again = replay.apply(IMAGES[i], q, IMAGES[q.partner] if q.is_mixed else None)
        assert torch.equal(again, view)
        assert torch.equal(_replay_without_kdcache(describe_spec(spec)["spec"], arrays, row, IMAGES[i]), view)
    expected = {"none": {0}, "mixup": {1}, "cutmix": {2}, "both": {0, 1, 2}}[spec.mix]
    assert {p.mix_kind for p, _ in sampled} == expected


def test_apply_is_deterministic_and_does_not_modify_inputs():
    pipe = ViewPipeline(ViewSpec(size=16, mix="mixup"))
    img, partner = IMAGES[0].clone(), IMAGES[1].clone()
    p = ViewParams(
        crop=(2, 3, 20, 25), flip=True, mix_kind=1, partner=1, partner_crop=(0, 0, 31, 34), lam=0.3
    )
    a, b = pipe.apply(img, p, partner), pipe.apply(img, p, partner)
    assert torch.equal(a, b)
    assert torch.equal(img, IMAGES[0]) and torch.equal(partner, IMAGES[1])


def _unnormalise(spec: ViewSpec, x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]
    return x * std + mean


def test_flip_actually_flips():
    pipe = ViewPipeline(ViewSpec(size=16))
    plain = pipe.apply(IMAGES[2], ViewParams(crop=(1, 2, 25, 20), flip=False))
    flipped = pipe.apply(IMAGES[2], ViewParams(crop=(1, 2, 25, 20), flip=True))
    assert not torch.equal(plain, flipped)
    assert torch.equal(flipped, torch.flip(plain, dims=[-1]))


def test_full_crop_at_output_size_is_the_image_itself():
    spec = ViewSpec(size=20)
    img = IMAGES[0][:, :20, :20].contiguous()
    out = ViewPipeline(spec).apply(img, ViewParams(crop=(0, 0, 20, 20), flip=False))
    torch.testing.assert_close(_unnormalise(spec, out), img.float() / 255, rtol=0, atol=1e-6)


def test_mixup_and_cutmix_blend_the_two_views():
    spec = ViewSpec(size=16, mix="both")
    pipe = ViewPipeline(spec)
    own = ViewParams(crop=(0, 0, 28, 36), flip=False)
    other = ViewParams(crop=(1, 1, 30, 30), flip=True)
    x = _unnormalise(spec, pipe.apply(IMAGES[0], own))
    xp = _unnormalise(spec, pipe.apply(IMAGES[1], other))
    common = {
        "crop": own.crop,
        "flip": own.flip,
        "partner": 1,
        "partner_crop": other.crop,
        "partner_flip": other.flip,
    }

    mixed = _unnormalise(spec, pipe.apply(IMAGES[0], ViewParams(mix_kind=1, lam=0.25, **common), IMAGES[1]))
    torch.testing.assert_close(mixed, 0.25 * x + 0.75 * xp, rtol=0, atol=1e-5)

    cut = _unnormalise(
        spec, pipe.apply(IMAGES[0], ViewParams(mix_kind=2, lam=0.75, box=(4, 2, 12, 10), **common), IMAGES[1])
    )
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 2:10] = True
    torch.testing.assert_close(cut[:, inside], xp[:, inside], rtol=0, atol=1e-5)
    torch.testing.assert_close(cut[:, ~inside], x[:, ~inside], rtol=0, atol=1e-5)


def test_mixed_view_without_partner_image_is_an_error():
    pipe = ViewPipeline(ViewSpec(mix="cutmix"))
    p = pipe.make_params(derive_view_seed(0, "k", 0), size_of(0), num_samples=N, size_of=size_of)
    with pytest.raises(ConfigError, match=f"sample {p.partner}"):
        pipe.apply(IMAGES[0], p)


@pytest.mark.parametrize(
    "image",
    [torch.zeros(3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.uint8)],
)
def test_wrong_image_type_is_a_data_error(image):
    with pytest.raises(DataError, match="uint8"):
        ViewPipeline(ViewSpec()).apply(image, ViewParams(crop=(0, 0, 4, 4), flip=False))


def test_crop_outside_the_image_is_a_data_error_not_silent_padding():
    with pytest.raises(DataError, match="28x36"):
        ViewPipeline(ViewSpec()).apply(IMAGES[0], ViewParams(crop=(10, 0, 20, 36), flip=False))


@pytest.mark.parametrize("hw", [(28, 36), (50, 17), (16, 16), (9, 40)])
def test_eval_view_shape_and_determinism(hw):
    spec = ViewSpec(size=16)
    pipe = ViewPipeline(spec)
    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8)
    out = pipe.eval_view(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, pipe.eval_view(img))
    if hw == (16, 16):  # already the right size: no resampling at all
        torch.testing.assert_close(_unnormalise(spec, out), img.float() / 255, rtol=0, atol=1e-6)


def test_eval_view_crop_pct_takes_the_centre_of_the_resized_image():
    # crop_pct 0.8 on a 20 px square: the shorter side stays 20 (= floor(16 / 0.8)), the centre 16 px is kept.
    spec = ViewSpec(size=16, crop_pct=0.8)
    img = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    out = ViewPipeline(spec).eval_view(img)
    assert spec.eval_resize == 20 and out.shape == (3, 16, 16)
    torch.testing.assert_close(_unnormalise(spec, out), img[:, 2:18, 2:18].float() / 255, rtol=0, atol=1e-6)
    assert ViewSpec(size=299, crop_pct=299 / 342).eval_resize == 342  # no float floor surprise


def test_pad_crop_with_crop_resize_is_torchvisions_resize_then_crop():
    """--crop pad --padding 0 --crop-resize 52 --size 48: resize 32 -> 52, a random 48 crop, flip (Keras example)."""
    import pytest
    from torchvision.transforms.v2 import functional as TF

    from kdcache.augment import ViewPipeline, ViewSpec
    from kdcache.errors import ConfigError

    spec = ViewSpec(size=48, crop="pad", padding=0, crop_resize=52, mean=(0, 0, 0), std=(1, 1, 1))
    pipe = ViewPipeline(spec)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    seen = set()
    for seed in range(40):
        p = pipe.make_params(seed, (32, 32))
        top, left, h, w = p.crop
        assert (h, w) == (48, 48) and 0 <= top <= 4 and 0 <= left <= 4
        seen.add((top, left))
        ref = TF.crop(TF.resize(img, [52], antialias=True), top, left, 48, 48)
        ref = TF.horizontal_flip(ref) if p.flip else ref
        assert torch.equal(pipe.apply(img, p), TF.to_dtype(ref, torch.float32, scale=True))
    assert len(seen) > 10
    assert spec.replay_dict()["crop_resize"] == 52 and "crop_resize" not in ViewSpec().replay_dict()
    with pytest.raises(ConfigError, match="crop_resize must be 0"):
        ViewSpec(size=48, crop="pad", crop_resize=40)
    with pytest.raises(ConfigError, match="needs crop 'pad'"):
        ViewSpec(size=48, crop_resize=52)
