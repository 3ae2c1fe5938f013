"""``ModelCfg``: how to rebuild a model and what input it expects; ``set_model_cfg`` attaches it.

A leaf module (it imports nothing else from :mod:`kdcache.models`) so that the registry and every
builder module (torchvision, timm, Hugging Face, the built-in architectures) can import it without
importing each other.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdcache.errors import ModelError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelCfg", "accepted_kwargs", "check_kwargs", "set_model_cfg"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelCfg:
    """How to rebuild a model and what input it expects.

    ``crop_pct`` is the evaluation crop's share of the resized image (timm's convention): the
    eval view resizes the shorter side to ``input_size / crop_pct`` and centre-crops ``input_size``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    # Input settings the model cannot tell (a Hugging Face model saved without its image processor):
    # views must be given them explicitly (see kdcache._views.resolve_view_sources).
    requires_input: tuple[str, ...] = ()
    # Input settings (size, mean, std, interpolation, crop_pct) read from the model's image processor (a Hugging
    # Face model's preprocessor_config.json), not set by its architecture's code: the view message says so.
    processor_input: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        for k in ("requires_input", "processor_input"):  # written only when set: older checkpoints' dicts
            if d[k]:
                d[k] = list(d[k])
            else:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCfg":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        d["requires_input"] = tuple(d.get("requires_input", ()))
        d["processor_input"] = tuple(d.get("processor_input", ()))
        return cls(**d)


def set_model_cfg(model: nn.Module, *, input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  interpolation: str = "bilinear", crop_pct: float = 1.0,
                  requires_input: tuple[str, ...] = (), processor_input: tuple[str, ...] = ()) -> nn.Module:
    """Attach a model's expected input (size, normalisation); ``create_model`` fills name/kwargs."""
    model.kdcache_cfg = ModelCfg(name="", input_size=int(input_size), mean=tuple(float(v) for v in mean),
                                 std=tuple(float(v) for v in std), interpolation=interpolation,
                                 crop_pct=float(crop_pct), requires_input=tuple(requires_input),
                                 processor_input=tuple(processor_input))
    return model


def accepted_kwargs(fn: Callable[..., Any]) -> set[str] | None:
    """Keyword arguments ``fn`` accepts by name, or ``None`` when it takes ``**kwargs`` (anything goes)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and C callables without a signature
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_kwargs(name: str, kwargs: Iterable[str], valid: set[str] | None) -> None:
    """Raise ``ModelError`` naming the arguments of ``kwargs`` outside ``valid`` (``None``: no check)."""
    if valid is None:
        return
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        shown = sorted(valid - {"num_classes", "self"})
        raise ModelError(f"model {name!r}: unknown argument{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; it takes {', '.join(shown) if shown else 'no arguments'}")
