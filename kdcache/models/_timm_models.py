"""timm models as teachers or students: ``create_model("timm:convnext_tiny", num_classes=10)``.

timm is an optional extra. Its models already split ``forward_features``/``forward_head``, and
each carries a ``pretrained_cfg`` describing its expected input (size, mean, std, interpolation,
``crop_pct``), which becomes the kdcache :class:`~kdcache.models.ModelCfg`: it sets the default
view spec of a dump and the evaluation view, so the teacher's preprocessing travels with it.

timm's distilled DeiTs (``deit_*_distilled_*``) are switched to distilled training, so they keep
kdcache's DeiT contract: ``(cls_logits, dist_logits)`` in training (the distillation loss routes
the teacher to ``head_dist``), their average in eval.
"""

from __future__ import annotations

from typing import Any
from urllib.error import URLError

from torch import nn

from kdcache._utils import optional_import
from kdcache.errors import DownloadUnavailableError, ModelError
from kdcache.models._cfg import IMAGENET_MEAN, IMAGENET_STD, set_model_cfg

__all__ = ["create_timm_model"]


def _input_spec(model: nn.Module) -> dict[str, Any]:
    """input_size/mean/std/interpolation/crop_pct from the model's ``pretrained_cfg`` (or ``default_cfg``)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    # ModelCfg holds one square size; timm's (C, H, W) is square for classification models.
    spec: dict[str, Any] = {
        "input_size": int(max(size[-2:])),
        "mean": tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
    }
    interp = cfg.get("interpolation")
    if interp in ("bilinear", "bicubic", "nearest"):
        spec["interpolation"] = interp
    crop_pct = cfg.get("crop_pct")
    if isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1:
        spec["crop_pct"] = float(crop_pct)
    return spec


def create_timm_model(name: str, *, num_classes: int, pretrained: bool = False, **kw: Any) -> nn.Module:
    """Build timm model ``name`` with a ``num_classes``-way head (timm resizes the pretrained head itself)."""
    timm = optional_import("timm", extra="timm", what="timm: models", error=ModelError)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kw)
    except (URLError, OSError) as e:
        # Hugging Face Hub and urllib both report an unreachable network as OSError subclasses.
        if not pretrained:
            raise
        raise DownloadUnavailableError(
            f"cannot download the pretrained weights of timm model {name!r} ({e}); when offline, build it "
            f"without pretrained weights and pass `teacher_weights` PATH to a local checkpoint") from e
    except RuntimeError as e:
        # timm reports unknown names as RuntimeError("Unknown model (...)").
        raise ModelError(f"timm model {name!r}: {e}") from e
    # (A TypeError, e.g. an argument the model class does not take, reaches create_model, which
    # reports it with timm's own message naming the argument.)
    if callable(getattr(model, "set_distilled_training", None)):
        model.set_distilled_training(True)  # training returns (cls, dist) as kdcache's DeiT does
    return set_model_cfg(model, **_input_spec(model))
