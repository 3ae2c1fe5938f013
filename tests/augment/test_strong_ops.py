"""The format-3 ops (pad-crop, auto-augment, colour jitter, 3-Augment, random erasing): each kernel with its
recorded argument is the torchvision call with that argument; torchvision's own policies and ColorJitter give
the same pixels from the same seeded stream; parameters round-trip through the arrays exactly; the sampled
distributions are the spec's; bad settings are one-line errors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kdcache.augment import PRESETS, ViewPipeline, ViewSpec
from kdcache.augment._autoaug import KERNELS, apply_kernel
from kdcache.augment._autoaug_config import RAND_INCREASING_OPS, parse_auto_augment
from kdcache.augment._oplist import build_ops
from kdcache.augment._seeding import seeded_stream
from kdcache.errors import ConfigError


def _image(seed: int = 0, h: int = 32, w: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _draw(spec: ViewSpec, n: int, hw=(32, 32)):
    p = ViewPipeline(spec)
    return p, [p.make_params(1000 + i, hw, num_samples=50, size_of=lambda _i: hw) for i in range(n)]


# ---------------------------------------------------------------------- kernels
_FILL = [124.0, 116.0, 104.0]
_DIRECT = {
    "Identity": lambda x, a: x,
    "AutoContrast": lambda x, a: F.autocontrast(x),
    "Equalize": lambda x, a: F.equalize(x),
    "Invert": lambda x, a: F.invert(x),
    "Rotate": lambda x, a: F.rotate(x, angle=a, interpolation="bilinear", fill=_FILL),
    "Posterize": lambda x, a: F.posterize(x, bits=int(a)),
    "Solarize": lambda x, a: F.solarize(x, threshold=a),
    "Color": lambda x, a: F.adjust_saturation(x, a),
    "Contrast": lambda x, a: F.adjust_contrast(x, a),
    "Brightness": lambda x, a: F.adjust_brightness(x, a),
    "Sharpness": lambda x, a: F.adjust_sharpness(x, a),
    "ShearX": lambda x, a: F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[a, 0.0],
                                    interpolation="bilinear", fill=_FILL, center=[0, 0]),
    "ShearY": lambda x, a: F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, a],
                                    interpolation="bilinear", fill=_FILL, center=[0, 0]),
    "TranslateX": lambda x, a: F.affine(x, angle=0.0, translate=[int(a), 0], scale=1.0, shear=[0.0, 0.0],
                                        interpolation="bilinear", fill=_FILL),
    "TranslateY": lambda x, a: F.affine(x, angle=0.0, translate=[0, int(a)], scale=1.0, shear=[0.0, 0.0],
                                        interpolation="bilinear", fill=_FILL),
}
_ARGS = {"Rotate": -17.5, "Posterize": 3.0, "Solarize": 100.0, "Color": 1.6, "Contrast": 0.4, "Brightness": 1.3,
         "Sharpness": 1.7, "ShearX": 12.0, "ShearY": -9.0, "TranslateX": -7.0, "TranslateY": 5.0}


@pytest.mark.parametrize("name", [k for k in KERNELS if k != "SolarizeAdd"])
def test_each_kernel_with_its_recorded_argument_is_the_torchvision_call(name):
    x, a = _image(1) // 2 + 40, _ARGS.get(name, 0.0)  # low contrast: AutoContrast and Equalize change it
    got = apply_kernel(x, KERNELS.index(name), a, interpolation="bilinear", fill=_FILL)
    want = _DIRECT[name](x, a)
    assert torch.equal(got, want)
    if name not in ("Identity",):
        assert not torch.equal(got, x)  # the op really changes the image


def test_solarize_add_is_timms_lookup_table_and_256_solarizes_nothing():
    x = _image(2)
    got = apply_kernel(x, KERNELS.index("SolarizeAdd"), 60.0, interpolation="bilinear", fill=None)
    lut = torch.tensor([min(255, i + 60) if i < 128 else i for i in range(256)], dtype=torch.uint8)
    assert torch.equal(got, lut[x.long()])
    assert torch.equal(apply_kernel(x, KERNELS.index("Solarize"), 256.0, interpolation="bilinear", fill=None), x)


@pytest.mark.parametrize("policy,tv", [("trivialaugment", v2.TrivialAugmentWide),
                                       ("autoaugment", lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))])
def test_torchvisions_policies_make_the_same_choices_from_the_same_stream(policy, tv, monkeypatch):
    """Our draws are torchvision's own (same calls, same order): seeded alike, torchvision applies the same
    ops with the same arguments (ours stored as float32), and the pixels agree to uint8 rounding."""
    from kdcache.augment._autoaug import _torchvision_arg

    spec = ViewSpec(size=32, auto_augment=policy)
    (op,) = build_ops(spec)
    transform = tv()
    calls: list[tuple[str, float]] = []
    original = type(transform)._apply_image_or_video_transform

    def spy(self, image, transform_id, magnitude, **kw):
        calls.append((transform_id, magnitude))
        return original(self, image, transform_id, magnitude, **kw)

    monkeypatch.setattr(type(transform), "_apply_image_or_video_transform", spy)
    exact = 0
    for seed in range(80):
        x = _image(seed)
        calls.clear()
        with seeded_stream(seed):
            want = transform(x)
        with seeded_stream(seed):
            params = op.make_params()
        ours = [(KERNELS[o], a) for o, a in zip(params["aa_op"], params["aa_arg"]) if o >= 0]
        theirs = [(name, float(np.float32(_torchvision_arg(name, m)))) for name, m in calls]
        assert ours == theirs, seed
        got = op.apply(x, params)
        exact += int(torch.equal(got, want))
        if not any(n.startswith("Shear") for n, _ in ours):  # a float32 shear angle may move a resampled pixel
            assert (got.int() - want.int()).abs().max() <= 1
    assert exact >= 60


def test_colour_jitter_is_torchvisions_from_the_same_stream():
    spec = ViewSpec(size=32, color_jitter=(0.4, 0.3, 0.2, 0.1))
    (op,) = build_ops(spec)
    tv = v2.ColorJitter(brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1)
    for seed in range(20):
        x = _image(seed)
        with seeded_stream(seed):
            want = tv(x)
        with seeded_stream(seed):
            got = op.apply(x, op.make_params())
        assert (got.int() - want.int()).abs().max() <= 1  # factors are float32 in the cache


def test_pad_crop_is_resize_pad_and_crop_with_integer_offsets():
    spec = ViewSpec(size=32, crop="pad", padding=4, padding_mode="reflect", flip_prob=0.0)
    p, params = _draw(spec, 200, hw=(40, 60))
    img = _image(3, 40, 60)
    resized = F.resize(img, [32], interpolation="bilinear", antialias=True)
    assert resized.shape[-2:] == (32, 48)
    padded = F.pad(resized, [4], padding_mode="reflect")
    for prm in params[:20]:
        top, left, h, w = prm.crop
        x = p.apply(img, prm)
        want = F.normalize(F.to_dtype(padded[:, top:top + 32, left:left + 32], torch.float32, scale=True),
                           mean=list(spec.mean), std=list(spec.std))
        assert (h, w) == (32, 32) and torch.equal(x, want)
    tops = Counter(prm.crop[0] for prm in params)
    lefts = Counter(prm.crop[1] for prm in params)
    assert set(tops) <= set(range(9)) and len(tops) == 9  # offsets uniform over [0, 2 * padding]
    assert set(lefts) <= set(range(25)) and max(lefts) >= 24


# ---------------------------------------------------------------------- distributions
def test_randaugment_samples_timms_ops_probability_and_magnitudes():
    spec = ViewSpec(size=32, auto_augment="rand-m9-mstd0.5-inc1")
    _, params = _draw(spec, 3000)
    ops = np.array([p.ops["aa_op"] for p in params])
    args = np.array([p.ops["aa_arg"] for p in params])
    assert ops.shape == (3000, 2)
    skipped = (ops == -1).mean()
    assert abs(skipped - 0.5) < 0.03  # timm's per-op probability 0.5
    rot = np.abs(args[ops == KERNELS.index("Rotate")])
    # magnitude N(9, 0.5) clipped to [0, 10]; Rotate = m / 10 * 30 degrees with a random sign
    assert abs(rot.mean() - 27.0) < 0.3 and abs(rot.std() - 1.5) < 0.3
    signed = args[ops == KERNELS.index("Rotate")]
    assert 0.4 < (signed < 0).mean() < 0.6
    # 15 increasing ops picked uniformly with replacement; Color/Contrast/... map to one kernel each
    picks = Counter(KERNELS[o] for o in ops[ops >= 0])
    expected = len(ops[ops >= 0]) / len(RAND_INCREASING_OPS)
    for name in ("AutoContrast", "Equalize", "Invert", "Rotate", "SolarizeAdd", "ShearX", "TranslateY"):
        assert abs(picks[name] - expected) < 0.25 * expected, (name, picks[name], expected)
    post = args[ops == KERNELS.index("Posterize")]
    assert set(np.unique(post)) <= {0.0, 1.0}  # increasing posterize: 4 - int(m / 10 * 4) bits, m near 9
    fac = args[ops == KERNELS.index("Brightness")]
    dev = np.abs(fac - 1.0)  # 1 +- m / 10 * 0.9, m ~ N(9, 0.5) clipped at 10
    assert dev.max() <= 0.9 + 1e-6 and dev.min() > 0.6 and abs(dev.mean() - 0.81) < 0.02


def test_randaugment_uniform_magnitude_n_and_p_options():
    _, params = _draw(ViewSpec(size=32, auto_augment="rand-m10-n3-mstd101-p1.0"), 2000)
    ops = np.array([p.ops["aa_op"] for p in params])
    args = np.array([p.ops["aa_arg"] for p in params])
    assert ops.shape == (2000, 3) and (ops >= 0).all()  # p1.0: never skipped
    rot = np.abs(args[ops == KERNELS.index("Rotate")])
    assert rot.min() < 3 and rot.max() > 27 and abs(rot.mean() - 15) < 1.5  # uniform in [0, 10] -> [0, 30]


def test_erasing_draws_timms_boxes_and_pinned_noise():
    spec = ViewSpec(size=32, reprob=0.5, remode="pixel", recount=3)
    p, params = _draw(spec, 2000)
    boxes = np.array([prm.ops["erase_box"] for prm in params])  # (n, 3, 4)
    used = boxes[..., 2] > 0
    erased = used.any(1)
    assert abs(erased.mean() - 0.5) < 0.04
    counts = Counter(used[erased].sum(1).tolist())
    assert set(counts) <= {1, 2, 3} and min(counts.values()) > 0.25 * erased.sum()
    area = boxes[..., 2] * boxes[..., 3] / 32**2
    assert area[used].max() <= 1 / 3 + 0.05 and area[used].min() >= 0.005
    top, left, h, w = boxes[used].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    # the erased pixels are the pinned PCG64 stream, in normalised units
    prm = next(q for q in params if q.ops["erase_box"][0][2] > 0 and q.ops["erase_box"][1][2] == 0)
    t, lft, hh, ww = prm.ops["erase_box"][0]
    x = p.apply(_image(4), prm)
    noise = np.random.Generator(np.random.PCG64(prm.ops["erase_seed"])).standard_normal((3, hh, ww),
                                                                                          dtype=np.float32)
    assert np.allclose(x[:, t:t + hh, lft:lft + ww].numpy(), noise, atol=1e-5)


def test_three_augment_and_jitter_distributions():
    _, params = _draw(ViewSpec(size=32, three_augment=True, color_jitter=(0.3, 0.3, 0.3, 0.0)), 1500)
    choice = Counter(p.ops["three_aug"] for p in params)
    assert set(choice) == {0, 1, 2} and min(choice.values()) > 400
    sig = np.array([p.ops["three_aug_sigma"] for p in params if p.ops["three_aug"] == 2])
    assert sig.min() >= 0.1 and sig.max() <= 2.0 and abs(sig.mean() - 1.05) < 0.1
    fac = np.array([p.ops["jitter_factor"] for p in params])
    assert (fac[:, :3] >= 0.7).all() and (fac[:, :3] <= 1.3).all() and (fac[:, 3] == 0).all()
    assert len({p.ops["jitter_order"] for p in params}) == 24  # every order of the four adjustments


# ---------------------------------------------------------------------- round trips
_SPECS = [dict(crop="pad", padding=3, padding_mode=m) for m in ("zero", "edge")] + [
    dict(auto_augment=a) for a in ("rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd1", "trivialaugment", "autoaugment")] + [
    dict(color_jitter=(0.4, 0.4, 0.4, 0.1)), dict(three_augment=True),
    dict(reprob=0.7, remode="rand", recount=2), dict(reprob=1.0, remode="const")] + [
    {**v, "size": 32} for k, v in PRESETS.items()]


@settings(max_examples=40, deadline=None)
@given(which=st.integers(0, len(_SPECS) - 1), seed=st.integers(0, 2**63 - 1), mix=st.sampled_from(["none", "both"]),
       h=st.integers(20, 48), w=st.integers(20, 48))
def test_parameters_round_trip_through_the_arrays_exactly(which, seed, mix, h, w):
    kw = {"size": 16, "mix": mix, **_SPECS[which]}
    if "mix" in _SPECS[which]:
        kw["mix"] = _SPECS[which]["mix"]
    spec = ViewSpec(**kw)
    p = ViewPipeline(spec)
    prm = p.make_params(seed, (h, w), num_samples=5, size_of=lambda _i: (h, w))
    arrays = p.params_to_arrays([prm, prm])
    assert set(arrays) == set(p.array_specs())
    back = p.params_from_arrays(arrays, 1)
    assert back == prm
    img = _image(seed % 1000, h, w)
    assert torch.equal(p.apply(img, prm, img), p.apply(img, back, img))


def test_default_settings_leave_the_identity_and_the_draws_of_older_specs_alone():
    old = ViewSpec(size=16, mix="both")
    assert not old.is_strong and "auto_augment" not in old.replay_dict()
    assert ViewSpec(size=16, auto_augment="trivialaugment").is_strong
    assert build_ops(old) == []


# ---------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("kw,match", [
    ({"auto_augment": "rand-m9-x3"}, r"unknown or malformed RandAugment section 'x3'"),
    ({"auto_augment": "augmix"}, "is not none, trivialaugment, autoaugment"),
    ({"auto_augment": "rand-m11"}, r"magnitude m must lie in \[0, mmax=10\]"),
    ({"reprob": 2}, r"reprob must lie in \[0, 1\], got 2"),
    ({"crop": "pad", "padding": 40, "padding_mode": "reflect"}, "padding 40 is too large"),
    ({"color_jitter": (0.1, 0.1, 0.1, 0.9)}, "hue <= 0.5"),
    ({"recount": 0}, r"recount must be an integer in \[1, 16\]"),
    ({"remode": "noise"}, "remode must be one of const, rand, pixel"),
])
def test_bad_settings_are_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        ViewSpec(size=32, **kw)
    assert "\n" not in str(e.value)


def test_parse_auto_augment_reads_timms_string():
    c = parse_auto_augment("rand-m9-mstd0.5-inc1")
    assert (c.m, c.n, c.mstd, c.increasing, c.prob, c.mmax) == (9, 2, 0.5, True, 0.5, 10)
    assert parse_auto_augment("rand-m9-mstd101").mstd == math.inf
    assert parse_auto_augment("none") is None
