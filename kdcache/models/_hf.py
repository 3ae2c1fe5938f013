"""Hugging Face image classifiers as teachers or students: ``create_model("hf:PATH_OR_ID", num_classes=10)``.

``PATH_OR_ID`` is a local directory written by ``save_pretrained`` (read offline, nothing is
fetched) or a Hub id such as ``google/vit-base-patch16-224`` (downloaded by ``transformers`` into
its cache when the network is reachable). The model comes from
``transformers.AutoModelForImageClassification`` with its own weights; its image processor gives
the input the model expects (size, mean, std, resampling, centre-crop share), which becomes the
:class:`~kdcache.models.ModelCfg`. A directory without ``preprocessor_config.json`` loads too, but
then the views' ``size``, ``mean`` and ``std`` must be given (``--size``, ``--mean``, ``--std``). :class:`HFImageClassifier` wraps it so ``forward(x)`` returns the
logits tensor, as every kdcache model does. ``transformers`` is an optional extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcache._utils import optional_import
from kdcache.errors import DownloadUnavailableError, ModelError
from kdcache.models._cfg import IMAGENET_MEAN, IMAGENET_STD, set_model_cfg

__all__ = ["HFImageClassifier", "create_hf_model"]

# PIL.Image.Resampling values, which Hugging Face image processors store as plain ints.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class HFImageClassifier(nn.Module):
    """A ``transformers`` image classifier whose ``forward(x)`` returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


class HFBackbone(HFImageClassifier):
    """A ``transformers`` vision model loaded without a class head (``headless=true``: CLIP's, DINOv2's or SigLIP's
    image tower, any ``AutoModel``): it gives pooled embeddings (``kdcache.models._embed``), no logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ModelError("this Hugging Face model was loaded without a class head (headless=true): it gives "
                         "embeddings only; store them with targets none+pooled (--targets none --embed pooled)")


def _check_loaded(model: nn.Module, loading: Mapping[str, Any], ref: str, headless: bool) -> None:
    """Weights the checkpoint lacks would be random: refused by name, never used silently. A classifier's
    checkpoint loaded headless lacks only the backbone's pooler: the pooler is dropped (the embedding is then the
    first token of the last hidden state, kdcache.models._embed), not run with random weights."""
    missing = sorted(str(k) for k in loading.get("missing_keys") or ())
    if headless and missing and all(k.startswith("pooler.") for k in missing) and hasattr(model, "pooler"):
        model.pooler = None
        return
    if missing:
        hint = ("a checkpoint without a class head? Load it with headless=true for embedding targets "
                "(targets none+pooled), or fine-tune a head first" if not headless else
                "is it a checkpoint of this architecture?")
        raise ModelError(f"hf model {ref!r}: {len(missing)} weights are not in the checkpoint and would be random "
                         f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); {hint}")


def _looks_like_path(ref: str) -> bool:
    """A Hub id is ``name`` or ``namespace/name``; anything else is meant as a directory."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or (os.sep != "/" and os.sep in ref)


def _size(value: Any) -> int | None:
    """One side from an image processor's size entry (``{"height", "width"}``, ``{"shortest_edge"}`` or int)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    get = value.get if isinstance(value, Mapping) else lambda k: getattr(value, k, None)
    if get("shortest_edge"):
        return int(get("shortest_edge"))
    h, w = get("height"), get("width")
    if h and w:
        if int(h) != int(w):
            raise ModelError(f"non-square input {h}x{w}: kdcache views are square")
        return int(h)
    return None


def _input_spec(processor: Any, ref: str) -> dict[str, Any]:
    """input_size/mean/std/interpolation/crop_pct from a Hugging Face image processor."""
    try:
        resize = _size(getattr(processor, "size", None))
        crop = _size(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    except ModelError as e:
        raise ModelError(f"hf model {ref!r}: {e}") from None
    if resize is None:
        raise ModelError(f"hf model {ref!r}: its image processor has no usable size ({processor.size!r})")
    spec: dict[str, Any] = {"input_size": crop or resize,
                            "mean": tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN),
                            "std": tuple(getattr(processor, "image_std", None) or IMAGENET_STD)}
    read = ["size"] + [k for k in ("mean", "std") if getattr(processor, f"image_{k}", None)]
    if crop and resize > crop:
        spec["crop_pct"] = crop / resize          # resize to `resize`, centre-crop `crop` (DeiT, BEiT)
    elif isinstance(getattr(processor, "crop_pct", None), float) and 0 < processor.crop_pct <= 1:
        spec["crop_pct"] = processor.crop_pct     # ConvNeXt: shortest edge / crop_pct, then centre crop
    resample = getattr(processor, "resample", None)
    resample = int(getattr(resample, "value", resample)) if resample is not None else None
    if resample in _RESAMPLE:
        spec["interpolation"] = _RESAMPLE[resample]
    spec["processor_input"] = tuple(read + [k for k in ("interpolation", "crop_pct") if k in spec])
    return spec


def create_hf_model(ref: str, *, num_classes: int, headless: bool = False, **kw: Any) -> nn.Module:
    """Load ``transformers.AutoModelForImageClassification`` from a local directory or a Hub id.

    The model keeps its own head, so its ``num_labels`` must equal ``num_classes``. ``headless``: load
    ``transformers.AutoModel`` instead (no class head, whatever the data's classes): a teacher of embeddings
    only (:class:`HFBackbone`). Other keyword arguments go to ``from_pretrained`` (e.g. ``revision``).
    """
    if not ref:
        raise ModelError("hf: needs a model directory or a Hub id, e.g. 'hf:./my-vit' or "
                         "'hf:google/vit-base-patch16-224'")
    tf = optional_import("transformers", extra="hf", what="hf: models", error=ModelError)
    local = Path(ref).expanduser()
    if local.is_dir():
        source, offline = str(local), True
    elif local.exists() or _looks_like_path(ref):
        raise ModelError(f"hf model {ref!r}: no such directory (expected a directory written by save_pretrained)")
    else:
        source, offline = ref, False
    # A directory saved without its image processor (model.save_pretrained only) still loads: the view input
    # must then be given explicitly (--size, --mean, --std), which resolve_view_sources enforces.
    has_processor = not offline or (local / "preprocessor_config.json").is_file()
    try:
        auto = tf.AutoModel if headless else tf.AutoModelForImageClassification
        model, loading = auto.from_pretrained(source, local_files_only=offline, output_loading_info=True, **kw)
        processor = tf.AutoImageProcessor.from_pretrained(source, local_files_only=offline) if has_processor \
            else None
    except (OSError, ValueError) as e:
        # transformers reports a missing file, an unreachable Hub and an unknown architecture this way.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not offline and isinstance(e, OSError):
            raise DownloadUnavailableError(
                f"cannot load Hugging Face model {ref!r} ({first}); when offline, download it elsewhere, "
                f"save it with save_pretrained and pass its directory as hf:DIR") from e
        raise ModelError(f"hf model {ref!r}: {first}") from e
    _check_loaded(model, loading, ref, headless)
    labels = int(model.config.num_labels)
    if not headless and labels != num_classes:
        raise ModelError(f"hf model {ref!r} predicts {labels} classes (config num_labels) but the data has "
                         f"{num_classes}; fine-tune it with a {num_classes}-way head first, or load it without "
                         "its head for embedding targets (headless=true, targets none+pooled)")
    wrapped = (HFBackbone if headless else HFImageClassifier)(model)
    if processor is None:
        side = getattr(model.config, "image_size", None)
        return set_model_cfg(wrapped, input_size=side if isinstance(side, int) else 224,
                             requires_input=("size", "mean", "std"))
    return set_model_cfg(wrapped, **_input_spec(processor, ref))
