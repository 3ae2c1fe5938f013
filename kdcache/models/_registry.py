"""The model registry: named builder functions and ``create_model``.

Builders are small functions that return an ``nn.Module``; they are registered
with :func:`register_model`. :func:`create_model` resolves a name to a model:

* a registered name (``cnn_small``, ``cifar_resnet56``, ``deit_tiny_patch4_32``, ...);
* any torchvision classification model by name (``resnet18``, ``mobilenet_v2``), head resized;
* ``timm:NAME`` when the optional ``timm`` extra is installed;
* ``hf:PATH_OR_ID``: a Hugging Face ``transformers`` image classifier (a local directory or a hub id);
* ``python:package.module:function`` for a user's own factory.

Every created model carries a :class:`ModelCfg` in ``model.kdcache_cfg``: how to
rebuild it (name + kwargs) and what input it expects (size, mean, std), so a
checkpoint can recreate the model and a teacher's preprocessing travels with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCfg,
    accepted_kwargs,
    check_kwargs,
    set_model_cfg,
)

__all__ = [
    "ModelCfg",
    "register_model",
    "create_model",
    "list_models",
    "is_registered",
    "model_cfg",
    "model_description",
    "model_tags",
    "set_model_cfg",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    tags: tuple[str, ...]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   tags: tuple[str, ...] = ()):
    """Register a builder ``fn(*, num_classes, **kwargs) -> nn.Module`` under ``name`` (default: its name).

    Usable bare (``@register_model``) or with arguments (``@register_model(tags=("student",))``).
    The builder should set ``input_size``/``mean``/``std`` through :func:`set_model_cfg` when they
    differ from the ImageNet defaults.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ModelError(f"model {key!r} is registered twice")
        doc = (f.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = _Entry(key, f, tuple(tags), doc[0] if doc else "")
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_builtin_models() -> None:
    # Importing the package registers every built-in architecture module.
    importlib.import_module("kdcache.models")


def list_models(tag: str | None = None) -> list[str]:
    """Registered model names (sorted), optionally only those carrying ``tag`` (one some model carries)."""
    _ensure_builtin_models()
    known = sorted({t for e in _REGISTRY.values() for t in e.tags})
    if tag is not None and tag not in known:
        raise ModelError(f"unknown tag {tag!r}; known tags: {', '.join(known)}")
    return sorted(n for n, e in _REGISTRY.items() if tag is None or tag in e.tags)


def model_description(name: str) -> str:
    _ensure_builtin_models()
    return _REGISTRY[name].description if name in _REGISTRY else ""


def model_tags(name: str) -> tuple[str, ...]:
    """Tags a registered model carries (``()`` for torchvision, ``timm:``, ``hf:`` and ``python:`` names)."""
    _ensure_builtin_models()
    return _REGISTRY[name].tags if name in _REGISTRY else ()


def is_registered(name: str) -> bool:
    _ensure_builtin_models()
    return name in _REGISTRY


def model_cfg(model: nn.Module) -> ModelCfg:
    """The :class:`ModelCfg` a model was created with (raises ``ModelError`` for foreign modules)."""
    cfg = getattr(model, "kdcache_cfg", None)
    if not isinstance(cfg, ModelCfg):
        raise ModelError(f"{type(model).__name__} was not built by kdcache.create_model")
    return cfg


def _torchvision_builder(name: str) -> Callable[..., nn.Module] | None:
    from torchvision import models as tvm

    try:
        return tvm.get_model_builder(name)
    except ValueError:
        return None


def _python_builder(spec: str) -> Callable[..., nn.Module]:
    target = spec[len("python:"):]
    mod_name, sep, fn_name = target.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ModelError(f"model {spec!r}: expected 'python:package.module:function'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelError(f"model {spec!r}: cannot import {mod_name!r}: {e}") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ModelError(f"model {spec!r}: {mod_name!r} has no callable {fn_name!r}")
    return fn


def _build(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    if name in _REGISTRY or name.startswith("python:"):
        builder = _REGISTRY[name].builder if name in _REGISTRY else _python_builder(name)
        # Unknown arguments are the user's mistake: name them. A TypeError raised *inside* the builder
        # is not, so it is never caught here as if it were one.
        check_kwargs(name, kwargs, accepted_kwargs(builder))
        return builder(num_classes=num_classes, **kwargs)
    if name.startswith("timm:"):
        from kdcache.models._timm_models import create_timm_model

        return create_timm_model(name[len("timm:"):], num_classes=num_classes, **kwargs)
    if name.startswith("hf:"):
        from kdcache.models._hf import create_hf_model

        return create_hf_model(name[len("hf:"):], num_classes=num_classes, **kwargs)
    if _torchvision_builder(name) is not None:
        from kdcache.models._tv import create_torchvision_model

        return create_torchvision_model(name, num_classes=num_classes, **kwargs)
    from kdcache.models._tv import classification_model_names

    close = difflib.get_close_matches(name, list_models() + classification_model_names(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run 'kdcache models' to list them"
    raise ModelError(f"unknown model {name!r}{hint}")


def create_model(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way head.

    ``None`` values in ``overrides`` are dropped, so CLI flags can be passed straight through.
    Raises :class:`~kdcache.errors.ModelError` with close matches for unknown names and naming any
    argument the builder does not take (checked against its signature before it is called).
    """
    _ensure_builtin_models()
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    try:
        model = _build(name, num_classes, kwargs)
    except TypeError as e:
        # Argument names were checked before the call, so this is the builder's own failure: say so,
        # with the real cause (chained), instead of blaming the user's arguments.
        raise ModelError(f"model {name!r}: building it raised TypeError: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r}: builder returned {type(model).__name__}, not an nn.Module")
    prev = getattr(model, "kdcache_cfg", None)
    base = prev if isinstance(prev, ModelCfg) else ModelCfg(name=name)
    model.kdcache_cfg = dataclasses.replace(base, name=name, kwargs={"num_classes": num_classes, **kwargs})
    return model
