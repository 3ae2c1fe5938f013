"""Any torchvision classification model as a kdcache teacher or student.

``create_model("resnet50", num_classes=10, pretrained=True)`` lands here. The head is resized to
``num_classes``; with ``pretrained=True`` the backbone keeps its ImageNet weights and only the
head is new. The expected input (size, mean, std, interpolation) comes from the weights' own
preprocessing metadata, so a teacher's preprocessing travels with it into the cache.
"""

from __future__ import annotations

from typing import Any
from urllib.error import URLError

from torch import nn
from torchvision import models as tvm

from kdcache.errors import DownloadUnavailableError, ModelError
from kdcache.models._cfg import IMAGENET_MEAN, IMAGENET_STD, set_model_cfg

__all__ = ["create_torchvision_model", "classification_model_names", "find_head", "resize_head"]

# Models with auxiliary classifiers return a tuple in training mode; kdcache trains on plain logits.
_AUX_MODELS = ("googlenet", "inception_v3")


def classification_model_names() -> list[str]:
    """Names of torchvision's ImageNet classification models (detection/segmentation/video excluded)."""
    return tvm.list_models(module=tvm)


def find_head(model: nn.Module, *, num_outputs: int) -> tuple[str, nn.Module]:
    """``(qualified name, module)`` of the final classifier: the last ``Linear`` producing ``num_outputs``.

    Walks modules in registration order (the order ``forward`` uses for every torchvision
    classifier), so this finds ``fc`` (ResNet, RegNet, ShuffleNet, GoogLeNet, Inception),
    ``classifier[-1]`` (MobileNet, EfficientNet, ConvNeXt, VGG, DenseNet, MaxViT), ``heads.head``
    (ViT) and ``head`` (Swin). SqueezeNet's 1×1 convolution head is accepted as well.
    """
    found: tuple[str, nn.Module] | None = None
    for qname, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_outputs:
            found = (qname, module)
    if found is None:
        for qname, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.out_channels == num_outputs:
                found = (qname, module)
    if found is None:
        raise ModelError(f"{type(model).__name__}: cannot find a classifier layer with {num_outputs} outputs "
                         "to resize; build this model with a 'python:module:function' factory instead")
    return found


def _set_submodule(model: nn.Module, qname: str, new: nn.Module) -> None:
    parent_name, _, attr = qname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def resize_head(model: nn.Module, *, old_classes: int, num_classes: int) -> nn.Module:
    """Replace every classifier layer with ``old_classes`` outputs (main and auxiliary heads) by a fresh one."""
    find_head(model, num_outputs=old_classes)  # raises ModelError when the model has no head to resize
    targets = [(q, m) for q, m in model.named_modules()
               if (isinstance(m, nn.Linear) and m.out_features == old_classes)
               or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == old_classes)]
    for qname, old in targets:
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
        _set_submodule(model, qname, new.to(device=old.weight.device, dtype=old.weight.dtype))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def _adapt_small_input(model: nn.Module, name: str) -> None:
    """CIFAR-style stem for 32 px inputs: 3×3 stride-1 ``conv1`` and no max-pool (ResNet family only)."""
    if not isinstance(model, tvm.ResNet):
        raise ModelError(f"small_input=True only applies to ResNet-family models (resnet*, resnext*, "
                         f"wide_resnet*), not {name!r}")
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.conv1.to(device=old.weight.device, dtype=old.weight.dtype)
    model.maxpool = nn.Identity()


def _input_spec(weights: Any) -> dict[str, Any]:
    """input_size/mean/std/interpolation/crop_pct from a weights enum's eval transforms, else ImageNet at 224."""
    spec: dict[str, Any] = {"input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                            "interpolation": "bilinear"}
    if weights is None:
        return spec
    t = weights.transforms()
    crop = getattr(t, "crop_size", None)
    if crop:
        spec["input_size"] = int(crop[0])
        resize = getattr(t, "resize_size", None)
        if resize and int(resize[0]) >= int(crop[0]):
            spec["crop_pct"] = int(crop[0]) / int(resize[0])  # e.g. 224 / 256: resize to 256, centre-crop 224
    if getattr(t, "mean", None) is not None and getattr(t, "std", None) is not None:
        spec["mean"], spec["std"] = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
    interp = getattr(t, "interpolation", None)
    if interp is not None:
        spec["interpolation"] = str(getattr(interp, "value", interp))
    return spec


def create_torchvision_model(name: str, *, num_classes: int, pretrained: bool = False,
                             small_input: bool = False, **kw: Any) -> nn.Module:
    """Build torchvision classification model ``name`` with a ``num_classes``-way head.

    ``pretrained=True`` loads the model's default ImageNet weights (downloaded by torchvision into
    its cache; offline this raises :class:`DownloadUnavailableError`). ``small_input=True`` adapts
    a ResNet stem to 32 px images (the new 3×3 ``conv1`` starts untrained, even with pretrained
    weights). Other keyword arguments go to the torchvision builder.
    """
    if name not in classification_model_names():
        raise ModelError(f"torchvision model {name!r} is not an image classification model; "
                         "kdcache teachers and students must produce class logits")
    if "weights" in kw:
        raise ModelError("pass pretrained=True (the default weights) or load weights with "
                         "`teacher_weights` PATH instead of a torchvision 'weights' argument")
    try:
        default_weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        default_weights = None
    if name in _AUX_MODELS:
        kw.setdefault("aux_logits", False)
        if not pretrained:
            kw.setdefault("init_weights", True)
    if pretrained:
        if default_weights is None:
            raise ModelError(f"torchvision has no pretrained weights for {name!r}")
        try:
            model = tvm.get_model(name, weights=default_weights, **kw)
        except (URLError, OSError) as e:
            raise DownloadUnavailableError(
                f"cannot download the pretrained weights of {name!r} ({e}); when offline, build the model "
                f"without pretrained weights and pass `teacher_weights` PATH to a local checkpoint") from e
        old_classes = len(default_weights.meta.get("categories") or []) or 1000
        if num_classes != old_classes:
            resize_head(model, old_classes=old_classes, num_classes=num_classes)
    else:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kw)
    spec = _input_spec(default_weights)
    if small_input:
        _adapt_small_input(model, name)
        spec["input_size"] = 32
    return set_model_cfg(model, **spec)
