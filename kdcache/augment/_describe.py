"""A self-contained, JSON-safe description of a view spec: enough to rebuild views without kdcache.

The cache stores this next to the parameter arrays, so anyone with torchvision can
replay a cached view (or audit what the teacher saw) from the arrays alone.
"""

from __future__ import annotations

from typing import Any

from kdcache.augment._params import param_array_specs
from kdcache.augment._spec import ViewSpec

__all__ = ["describe_spec", "kernel_versions", "summarize_spec"]

_TVF = "torchvision.transforms.v2.functional"


def _crop(spec: ViewSpec) -> dict[str, Any]:
    s, interp, aa = spec.size, spec.interpolation, spec.antialias
    if spec.crop == "pad":
        r = spec.pad_resize
        mode = {"zero": "constant"}.get(spec.padding_mode, spec.padding_mode)
        return {
            "name": "pad_crop",
            "settings": {"size": [s, s], "padding": spec.padding, "padding_mode": spec.padding_mode,
                         "interpolation": interp, "antialias": aa, **({"crop_resize": r} if spec.crop_resize else {})},
            "recorded": ["crop"],
            "apply": (
                f"x = image; if min(H, W) != {r}: x = {_TVF}.resize(x, [{r}], interpolation={interp!r}, "
                f"antialias={aa}); x = {_TVF}.pad(x, [{spec.padding}], fill=0, padding_mode={mode!r}); "
                f"x = {_TVF}.crop(x, top, left, {s}, {s}) on the uint8 (3, H, W) source image, with "
                "(top, left, height, width) = crop[i] in the padded image (height = width = size)."
            ),
            "sampled_by": "top = torch.randint(0, H_padded - size + 1, (1,)); left likewise over W_padded",
        }
    return {
        "name": "resized_crop",
        "settings": {
            "size": [s, s],
            "scale": list(spec.scale),
            "ratio": list(spec.ratio),
            "interpolation": interp,
            "antialias": aa,
        },
        "recorded": ["crop"],
        "apply": (
            f"x = {_TVF}.resized_crop(image, top, left, height, width, size=[{s}, {s}], "
            f"interpolation={interp!r}, antialias={aa}) on the uint8 (3, H, W) source image, "
            "with (top, left, height, width) = crop[i] in source pixels."
        ),
        "sampled_by": (
            f"torchvision.transforms.v2.RandomResizedCrop({s}, scale={list(spec.scale)}, "
            f"ratio={list(spec.ratio)}).make_params"
        ),
    }


def _ops(spec: ViewSpec) -> list[dict[str, Any]]:
    from kdcache.augment._oplist import build_ops  # the ops need torch; a spec's one-line summary does not

    per_sample = build_ops(spec)
    ops: list[dict[str, Any]] = [
        _crop(spec),
        {
            "name": "horizontal_flip",
            "settings": {"p": spec.flip_prob},
            "recorded": ["flip"],
            "apply": f"if flip[i]: x = {_TVF}.horizontal_flip(x) (still uint8).",
            "sampled_by": "flip = torch.rand(1) < p (one draw for every view, after the crop's)",
        },
        *[op.describe() for op in per_sample if op.stage == "uint8"],
        {
            "name": "to_float_0_1",
            "settings": {"dtype": "float32", "scale": True},
            "recorded": [],
            "apply": f"x = {_TVF}.to_dtype(x, torch.float32, scale=True), i.e. uint8 / 255 in [0, 1].",
            "sampled_by": None,
        },
        *[op.describe() for op in per_sample if op.stage == "float"],
    ]
    if spec.is_mixed:
        ops.append(
            {
                "name": "mix",
                "settings": {
                    "mode": spec.mix,
                    "mixup_alpha": spec.mixup_alpha,
                    "cutmix_alpha": spec.cutmix_alpha,
                    "mix_prob": spec.mix_prob,
                },
                "recorded": ["mix_kind", "mix_partner", "mix_lam", "mix_box", "partner_crop", "partner_flip"],
                "apply": (
                    "If mix_kind[i] == 0 x is unchanged. Otherwise build the partner view xp of cache "
                    "sample mix_partner[i] (a row of this cache: its key is sample_key[mix_partner[i]]) from "
                    "that sample's source image with the ops above using partner_crop[i], "
                    "partner_flip[i] and the partner_ copy of every other op's arrays. mix_kind 1 (MixUp): x = x.mul(lam).add_(xp.mul(1 - lam)) in "
                    "float32 with lam = mix_lam[i]. mix_kind 2 (CutMix): with (y0, x0, y1, x1) = "
                    "mix_box[i] in output pixels, x[:, y0:y1, x0:x1] = xp[:, y0:y1, x0:x1]; mix_lam[i] "
                    "is then 1 - box_area / size**2. The target weight of the sample itself is "
                    "mix_lam[i], of the partner 1 - mix_lam[i]."
                ),
                "sampled_by": (
                    "per view: mix if rand < mix_prob; for mode 'both' MixUp if rand < 0.5 else "
                    "CutMix; partner uniform in [0, num_samples); partner crop and flip as above; "
                    "lam from torchvision.transforms.v2.MixUp(alpha).make_params, box and "
                    "area-corrected lam from torchvision.transforms.v2.CutMix(alpha).make_params "
                    "on the output size"
                ),
            }
        )
    ops.append(
        {
            "name": "normalize",
            "settings": {"mean": list(spec.mean), "std": list(spec.std)},
            "recorded": [],
            "apply": f"x = {_TVF}.normalize(x, mean={list(spec.mean)}, std={list(spec.std)}).",
            "sampled_by": None,
        }
    )
    return ops


def describe_spec(spec: ViewSpec) -> dict[str, Any]:
    """Op order, each op's fixed settings, how its recorded parameters are applied, and the array layout."""
    ops = _ops(spec)
    s, r = spec.size, spec.eval_resize
    return {
        "spec": spec.to_dict(),
        "input": "uint8 tensor (3, H, W), RGB",
        "output": f"float32 tensor (3, {s}, {s}), normalised",
        "op_order": [op["name"] for op in ops],
        "ops": ops,
        "param_arrays": {
            name: {"shape": ["n", *shape], "dtype": dtype}
            for name, (shape, dtype) in param_array_specs(spec).items()
        },
        "seeding": (
            "Parameters of view v of the sample with key k under base seed b are drawn from torch's CPU "
            "generator seeded with derive_view_seed(b, k, v) = first 8 bytes (big-endian) of "
            "sha256(json.dumps(['kdcache.view-seed.v1', b, k, v], separators=(',', ':'), "
            "ensure_ascii=False).encode('utf-8')) shifted right by 1. Replaying needs only the arrays."
        ),
        "eval_view": {
            "op_order": ["resize", "center_crop", "to_float_0_1", "normalize"],
            "apply": (
                f"if min(H, W) != {r}: x = {_TVF}.resize(image, [{r}], interpolation={spec.interpolation!r}, "
                f"antialias={spec.antialias}) (shorter side to {r} = floor({s} / crop_pct {spec.crop_pct})); "
                f"x = {_TVF}.center_crop(x, [{s}, {s}]); "
                f"then to_dtype(float32, scale=True) and normalize as above."
            ),
        },
    }


def kernel_versions() -> dict[str, str]:
    """The versions of the libraries whose kernels and streams build a view (recorded in every new cache)."""
    import numpy
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__}


def summarize_spec(spec: ViewSpec) -> str:
    """One line naming a training view's ops in order, e.g. ``pad-crop 4 zero, flip 0.5, rand-m9-mstd0.5-inc1``."""
    resize = f"resize {spec.crop_resize}, " if spec.crop_resize else ""
    parts = [f"{resize}pad-crop {spec.padding} {spec.padding_mode}" if spec.crop == "pad" else
             f"resized-crop {spec.scale[0]:g}-{spec.scale[1]:g}", f"flip {spec.flip_prob:g}"]
    if spec.auto_augment != "none":
        parts.append(spec.auto_augment)
    if spec.three_augment:
        parts.append("3-augment")
    if any(spec.color_jitter):
        parts.append("color-jitter " + " ".join(f"{v:g}" for v in spec.color_jitter))
    if spec.reprob > 0:
        parts.append(f"erasing {spec.reprob:g} {spec.remode} x{spec.recount}")
    if spec.is_mixed:
        parts.append(f"mix {spec.mix} {spec.mix_prob:g}")
    return f"{', '.join(parts)} ({spec.interpolation})"
