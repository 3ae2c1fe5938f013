"""docs/cache-format.md is enough to rebuild every view (issue 29, item 6).

:func:`rebuild_view` is written from the document's *Rebuilding a view* and *From sample_key to the source
image* sections alone: plain ``zarr``, ``h5py``, ``numpy`` and ``torchvision`` calls, no kdcache view code,
no ``apply`` strings. For a cache of every op (pad-crop in every padding mode with its resize, both
interpolations, RandAugment, TrivialAugmentWide, AutoAugment, colour jitter with components off, 3-Augment at
even and odd sizes, the three erasing modes, MixUp and CutMix, all together) the teacher on the rebuilt views
must give the cached logits, and the pixels must be kdcache's own. The documented dtypes and attribute
shapes are checked against the disk.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
import zarr
from torchvision.transforms.v2 import functional as F

CASES = {
    "rrc-bilinear": {"size": 12},
    "rrc-bicubic-nearest-flip": {"size": 12, "interpolation": "bicubic", "flip_prob": 0.9},
    "pad-zero-resized": {"crop": "pad", "size": 12, "padding": 2},
    "pad-reflect": {"crop": "pad", "padding": 3, "padding_mode": "reflect"},
    "pad-edge-bicubic-resized": {"crop": "pad", "size": 13, "padding": 2, "padding_mode": "edge",
                                 "interpolation": "bicubic"},
    "pad-symmetric": {"crop": "pad", "padding": 4, "padding_mode": "symmetric"},
    "pad-crop-resize": {"crop": "pad", "size": 12, "crop_resize": 14, "padding": 1},
    "randaugment-inc": {"auto_augment": "rand-m9-mstd0.5-inc1"},
    "randaugment-n3-nearest": {"auto_augment": "rand-m7-n3-mstd1", "interpolation": "nearest",
                               "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
    "trivialaugment": {"auto_augment": "trivialaugment"},
    "autoaugment": {"auto_augment": "autoaugment"},
    "color-jitter-partial": {"color_jitter": (0.4, 0.0, 0.4, 0.1)},
    "three-augment-even": {"three_augment": True},
    "three-augment-odd": {"three_augment": True, "size": 11},
    "erasing-const": {"reprob": 0.9, "remode": "const", "recount": 2},
    "erasing-rand": {"reprob": 0.9, "remode": "rand"},
    "erasing-pixel": {"reprob": 0.9, "remode": "pixel", "recount": 3},
    "mixup": {"mix": "mixup"},
    "cutmix": {"mix": "cutmix"},
    "all-mixed": {"crop": "pad", "padding": 2, "auto_augment": "rand-m9-mstd0.5-inc1",
                  "color_jitter": (0.3, 0.2, 0.0, 0.0), "three_augment": True, "reprob": 0.6, "remode": "pixel",
                  "interpolation": "bicubic", "mix": "both"},
}

OP_NAMES = ("resized_crop", "pad_crop", "horizontal_flip", "auto_augment", "three_augment", "color_jitter",
            "to_float_0_1", "random_erasing", "mix", "normalize")


# ----------------------------------------------------------------------------- the document, as code
def source_image(h5_path: str, split: str, key: str) -> torch.Tensor:
    """*From sample_key to the source image*, hdf5 without filenames: key "<split>/<i>" is row i."""
    prefix, i = key.rsplit("/", 1)
    assert prefix == split
    with h5py.File(h5_path, "r") as f:
        return torch.from_numpy(np.ascontiguousarray(f[f"{split}/images"][int(i)])).permute(2, 0, 1).contiguous()


def _kernel(x, op, a, interp, fill):
    """The auto-augment kernel table."""
    if op == 0:
        return x
    if op in (1, 2, 3):
        return (F.autocontrast, F.equalize, F.invert)[op - 1](x)
    if op == 4:
        return F.rotate(x, angle=a, interpolation=interp, fill=fill)
    if op == 5:
        return F.posterize(x, bits=int(a))
    if op == 6:
        return F.solarize(x, threshold=a) if a <= 255 else x
    if op == 7:
        return torch.where(x < 128, (x.to(torch.int16) + int(a)).clamp(0, 255).to(torch.uint8), x)
    if op in (8, 9, 10, 11):
        return (F.adjust_saturation, F.adjust_contrast, F.adjust_brightness, F.adjust_sharpness)[op - 8](x, a)
    if op in (12, 13):
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[a, 0.0] if op == 12 else [0.0, a],
                        interpolation=interp, fill=fill, center=[0, 0])
    return F.affine(x, angle=0.0, translate=[int(a), 0] if op == 14 else [0, int(a)], scale=1.0, shear=[0.0, 0.0],
                    interpolation=interp, fill=fill)


def _one_sample(spec, image, rec, pre):
    """Steps 1-7 for one sample, from its recorded arrays ``rec`` (name -> value) named with prefix ``pre``."""
    S = spec["size"]
    top, left, h, w = (int(v) for v in rec[pre + "crop"])
    if spec["crop"] == "pad":
        R = spec.get("crop_resize") or S
        x = image
        if min(x.shape[-2:]) != R:
            x = F.resize(x, [R], interpolation=spec["interpolation"], antialias=spec["antialias"])
        if spec["padding"] > 0:
            mode = "constant" if spec["padding_mode"] == "zero" else spec["padding_mode"]
            x = F.pad(x, [spec["padding"]], fill=0, padding_mode=mode)
        x = F.crop(x, top, left, S, S)
    else:
        x = F.resized_crop(image, top, left, h, w, size=[S, S], interpolation=spec["interpolation"],
                           antialias=spec["antialias"])
    if bool(rec[pre + "flip"]):
        x = F.horizontal_flip(x)
    if spec["auto_augment"] != "none":
        if spec["auto_augment"].startswith("rand"):
            interp = "nearest" if spec["interpolation"] == "nearest" else "bilinear"
            fill = [float(min(255, round(255 * m))) for m in spec["mean"]]
        else:
            interp, fill = "nearest", None
        for op, a in zip(rec[pre + "aa_op"], rec[pre + "aa_arg"]):
            if int(op) != -1:
                x = _kernel(x, int(op), float(a), interp, fill)
    if spec["three_augment"]:
        choice = int(rec[pre + "three_aug"])
        if choice == 0:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        elif choice == 1:
            x = F.solarize(x, threshold=128.0)
        else:
            s = float(rec[pre + "three_aug_sigma"])
            c = S - 1 if S % 2 == 0 else S - 2
            k = max(1, min(2 * math.ceil(3 * s) + 1, c))
            x = F.gaussian_blur(x, kernel_size=[k, k], sigma=[s, s])
    if any(v > 0 for v in spec["color_jitter"]):
        adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for fn in rec[pre + "jitter_order"]:
            if spec["color_jitter"][int(fn)] > 0:
                x = adjust[int(fn)](x, float(rec[pre + "jitter_factor"][int(fn)]))
    x = F.to_dtype(x, torch.float32, scale=True)
    if spec["reprob"] > 0:
        mean = torch.tensor(spec["mean"], dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(spec["std"], dtype=torch.float32).view(3, 1, 1)
        g = np.random.Generator(np.random.PCG64(int(rec[pre + "erase_seed"])))
        x = x.clone()
        for top, left, h, w in (tuple(int(v) for v in b) for b in rec[pre + "erase_box"]):
            if h <= 0:
                continue
            if spec["remode"] == "const":
                v = np.zeros((3, 1, 1), np.float32)
            else:
                v = g.standard_normal((3, 1, 1) if spec["remode"] == "rand" else (3, h, w), dtype=np.float32)
            x[:, top:top + h, left:left + w] = (torch.from_numpy(v) * std + mean).expand(3, h, w)
    return x


def rebuild_view(cache: zarr.Group, image_of, i: int, v: int) -> torch.Tensor:
    """View ``v`` of cache row ``i``: *Rebuilding a view*, steps 1-9."""
    spec = cache.attrs["view_spec"]["spec"]
    names = [str(n) for n in cache.attrs["view_arrays"]]
    rec = {n: np.asarray(cache[n][i, v]) for n in names}
    x = _one_sample(spec, image_of(i), rec, "")
    if spec["mix"] != "none" and int(rec["mix_kind"]) != 0:
        p = int(rec["mix_partner"])  # a cache index
        xp = _one_sample(spec, image_of(p), rec, "partner_")
        lam = float(rec["mix_lam"])
        if int(rec["mix_kind"]) == 1:
            x = x.mul(lam).add_(xp.mul(1.0 - lam))
        else:
            y0, x0, y1, x1 = (int(t) for t in rec["mix_box"])
            x = x.clone()
            x[:, y0:y1, x0:x1] = xp[:, y0:y1, x0:x1]
    return F.normalize(x, mean=list(spec["mean"]), std=list(spec["std"]))


# ----------------------------------------------------------------------------- the checks
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One 2-view cache per case over a tiny 16-px dataset, and its teacher."""
    from kdcache.data import DataConfig
    from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint
    from tests.conftest import make_h5

    root = tmp_path_factory.mktemp("format_doc")
    h5 = make_h5(root / "tiny.h5", n_train=24)
    torch.manual_seed(1)
    save_checkpoint(str(root / "teacher.pt"), create_model("cnn_tiny", num_classes=3))
    caches = {}
    for name, view in CASES.items():
        out = str(root / f"{name}.zarr")
        dump_teacher(DumpConfig(data=DataConfig(source=f"hdf5:{h5}"), out=out,
                                teacher=TeacherSpec(weights=str(root / "teacher.pt")), views=2, seed=5,
                                view={"size": 16, **view}, batch_size=8, workers=0, block_size=8, device="cpu"),
                     progress=False, log=lambda _m: None)
        caches[name] = out
    return {"h5": str(h5), "teacher": str(root / "teacher.pt"), "caches": caches}


def _rebuild_all(made, name):
    g = zarr.open_group(made["caches"][name], mode="r")
    split = g.attrs["dataset"]["split"]
    keys = [str(k) for k in g["sample_key"][:]]
    images = {}

    def image_of(i):
        if i not in images:
            images[i] = source_image(made["h5"], split, keys[i])
        return images[i]

    n, views = g["done"].shape
    return g, torch.stack([rebuild_view(g, image_of, i, v) for v in range(views) for i in range(n)])


@pytest.mark.parametrize("name", list(CASES))
def test_views_rebuilt_from_the_document_give_the_cached_logits(made, name):
    from kdcache.engine import TeacherSpec, build_teacher  # the teacher only: no view code

    g, views = _rebuild_all(made, name)
    n, v = g["done"].shape
    teacher = build_teacher(TeacherSpec(weights=made["teacher"]), num_classes=3).model.eval()
    with torch.inference_mode():
        fresh = teacher(views).numpy()
    cached = np.concatenate([np.asarray(g["logits"][:, j], np.float32) for j in range(v)])
    tol = max(1e-2, 2.0 ** -10 * float(np.abs(fresh).max()))
    assert np.abs(fresh - cached).max() <= tol, (name, float(np.abs(fresh - cached).max()))
    if name in ("mixup", "cutmix", "all-mixed"):
        assert (np.asarray(g["mix_kind"][:]) != 0).any(), "no mixed view to check"


@pytest.mark.parametrize("name", list(CASES))
def test_the_document_gives_kdcache_pixels(made, name):
    from kdcache._views import build_views
    from kdcache.augment import ViewPipeline, ViewSpec
    from kdcache.cache import CacheStore
    from kdcache.data import DataConfig

    g, views = _rebuild_all(made, name)
    store = CacheStore.open(made["caches"][name])
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    ds = DataConfig(source=f"hdf5:{made['h5']}").open()
    n = store.num_samples
    for v in range(store.num_views):
        arrays = store.read_views([v] * store.num_blocks, names=store.layout.replay_names)
        ref = build_views(ds, pipeline, range(n), [pipeline.params_from_arrays(arrays, i) for i in range(n)])
        assert torch.equal(views[v * n:(v + 1) * n], ref), (name, v)


@pytest.mark.parametrize("name", ["pad-zero-resized", "pad-crop-resize", "mixup", "all-mixed", "rrc-bilinear"])
def test_the_documented_attributes_and_dtypes_are_the_disk(made, name):
    g = zarr.open_group(made["caches"][name], mode="r")
    vs = g.attrs["view_spec"]
    assert isinstance(vs["ops"], list) and [op["name"] for op in vs["ops"]] == vs["op_order"]
    assert all(set(op) == {"name", "settings", "recorded", "apply", "sampled_by"} for op in vs["ops"])
    assert set(vs["op_order"]) <= set(OP_NAMES)
    for arr, desc in vs["param_arrays"].items():
        assert str(g[arr].dtype) == desc["dtype"], (arr, g[arr].dtype, desc["dtype"])
    spec = vs["spec"]
    side = 16  # every image is 16 x 16
    if spec["crop"] == "pad":
        short = spec.get("crop_resize") or spec["size"]
        side = (short if side == short else int(short * side / side)) + 2 * spec["padding"]
    largest = max(side, spec["size"])
    want = next(t for t in (np.int8, np.int16, np.int32) if largest <= np.iinfo(t).max)
    for arr in ("crop", "partner_crop", "mix_box"):
        if arr in g:
            assert g[arr].dtype == want, (arr, g[arr].dtype)
    if "mix_partner" in g:
        keys = [str(k) for k in g["sample_key"][:]]
        partners = np.asarray(g["mix_partner"][:])
        assert ((partners >= -1) & (partners < len(keys))).all()  # a cache index


def test_weights_sha256_as_the_document_defines_it(made):
    import hashlib

    from kdcache.engine import TeacherSpec, build_teacher

    g = zarr.open_group(made["caches"]["mixup"], mode="r")
    model = build_teacher(TeacherSpec(weights=made["teacher"]), num_classes=3).model
    h = hashlib.sha256()
    for name in sorted(model.state_dict()):
        t = model.state_dict()[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    assert h.hexdigest() == g.attrs["identity"]["teacher"]["weights_sha256"] == g.attrs["teacher"]["weights_sha256"]
