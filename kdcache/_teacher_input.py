"""A cache's teachers as models: the teacher a cache (or an added teacher's group) records, and an added
teacher taking the cache's recorded views as its own input.

The views are fixed by the cache (its main teacher's size, normalisation and ops). A teacher added over them
(``add-teacher``, and ``verify --name`` replaying them) may expect another normalisation (a CLIP or Hugging Face
ViT with mean 0.5 beside an ImageNet-normalised cache): the views are then renormalised for it, exactly and per
channel, ``x' = (x · std_cache + mean_cache − mean_teacher) / std_teacher``, inside the teacher (so its pooled
embedding is taken on the renormalised input too). A view is never resized for a teacher (its pixels would no
longer be the student's): a teacher that cannot run on the cache's view size is refused in one line, before
anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from kdcache._teacher import LoadedTeacher, TeacherSpec, target_forward
from kdcache._views import resolve_view_sources
from kdcache.augment import ViewSpec
from kdcache.cache import CacheStore
from kdcache.errors import ConfigError, KdcacheError, ModelError

__all__ = ["Renormalized", "cache_teacher", "teacher_on_views"]


class Renormalized(nn.Module):
    """``model`` on views normalised with (``mean_from``, ``std_from``), renormalised to its own (``mean_to``,
    ``std_to``) first; its pooled embedding (``forward_embedding``) is taken on the renormalised input."""

    def __init__(self, model: nn.Module, mean_from, std_from, mean_to, std_to):
        super().__init__()
        self.model = model
        t = lambda v: torch.as_tensor([float(x) for x in v], dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("scale", t(std_from) / t(std_to), persistent=False)
        self.register_buffer("shift", (t(mean_from) - t(mean_to)) / t(std_to), persistent=False)
        self._embedder = None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._input(x))

    def forward_embedding(self, x: torch.Tensor):
        if self._embedder is None:
            from kdcache.models import pooled_embedder

            self._embedder = pooled_embedder(self.model)
        return self._embedder(self._input(x))


def teacher_on_views(teacher: LoadedTeacher, spec: ViewSpec, *, logits: bool, embedding: bool,
                     log: Callable[[str], None] = print) -> nn.Module:
    """``teacher``'s model, taking the views of ``spec`` (renormalised when its own mean/std differ); refuses a
    teacher that cannot run on views of ``spec.size`` (one blank view is run through it)."""
    try:
        own, _ = resolve_view_sources(teacher.cfg, {}, recorded=teacher.views)
    except ConfigError:  # a model that does not say its input (e.g. an hf: folder without its processor)
        own = spec
    model = teacher.model
    name = teacher.cfg.name
    if tuple(own.mean) != tuple(spec.mean) or tuple(own.std) != tuple(spec.std):
        log(f"teacher {name}: the cache's views are normalised with mean {_fmt(spec.mean)}, std {_fmt(spec.std)}; "
            f"renormalised to its own mean {_fmt(own.mean)}, std {_fmt(own.std)}")
        model = Renormalized(model, spec.mean, spec.std, own.mean, own.std).train(model.training)  # its own mode
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            target_forward(model, logits=logits, embedding=embedding)(torch.zeros(1, 3, spec.size, spec.size))
    except KdcacheError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the model raises on an input it cannot take, in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"teacher {name} cannot run on the cache's {spec.size}-px views ({type(e).__name__}: "
                          f"{first}); its own input is {own.size} px, and a cache's views are never resized for a "
                          "teacher: add a teacher that takes them, or dump a cache at its size") from None
    finally:
        model.train(was_training)
    if own.size != spec.size:
        log(f"teacher {name}: its own input is {own.size} px; it runs on the cache's {spec.size}-px views")
    return model


def _fmt(v) -> str:
    return " ".join(f"{float(x):g}" for x in v)


def cache_teacher(store: CacheStore, overrides: TeacherSpec | Mapping[str, Any] | None = None) -> TeacherSpec:
    """The teacher a cache was made with, as its dump recorded it (name, weights file, constructor arguments,
    seeded initialisation); ``overrides`` replaces single fields (``None`` values: not given), a full
    :class:`TeacherSpec` all of them. Weights given (``weights`` or ``random_init``) replace the recorded source."""
    if isinstance(overrides, TeacherSpec):
        return overrides
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    recorded = dict((store.attrs.get("config") or {}).get("teacher") or {})
    if given.get("weights") or given.get("random_init"):
        for k in ("weights", "random_init", "init_seed"):
            recorded.pop(k, None)
    if not recorded and not (given.get("name") or given.get("weights")):
        raise ConfigError(f"{store.path} does not record its teacher; pass `teacher` and `teacher_weights`")
    weights = recorded.get("weights")
    if weights and "weights" not in given and "://" not in str(weights) and not os.path.exists(weights):
        raise ModelError(f"{store.path} was made with the teacher weights {weights}, which do not exist here; "
                         "pass `teacher_weights`")
    return TeacherSpec.from_dict({**recorded, **given})
