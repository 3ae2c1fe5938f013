"""Build a teacher (for the dump, verification and the online reference): model + weights + identity.

A teacher always has real, reproducible weights: a weights file, a constructor that loads them
(``pretrained=True``, a ``python:`` or ``hf:`` builder), or, asked for explicitly with
``random_init`` (tests and benchmarks), an initialisation seeded by ``init_seed`` that is bit for
bit the same in every process, so a killed dump of it resumes. A kdcache checkpoint that records
the views its model was trained on (``view_spec``) hands their input settings (size, mean, std,
interpolation) to the dump as its defaults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdcache._teacher_spec import TeacherSpec, truthy
from kdcache.errors import ModelError
from kdcache.models import ModelCfg, create_model, model_cfg
from kdcache.models._checkpoint import is_kdcache_checkpoint, load_checkpoint, load_weights

__all__ = ["TeacherSpec", "LoadedTeacher", "build_teacher", "state_dict_sha256", "VIEW_INPUT_KEYS", "target_forward",
           "embedding_dim"]


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes), independent of file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# Input settings a teacher checkpoint's recorded training views hand to the dump as defaults.
VIEW_INPUT_KEYS = ("size", "mean", "std", "interpolation", "crop_pct")


def _loads_own_weights(spec: TeacherSpec) -> bool:
    """Constructors that bring real weights without a weights file."""
    name = spec.name or ""
    return truthy((spec.kwargs or {}).get("pretrained")) or name.startswith(("python:", "hf:"))


@dataclass
class LoadedTeacher:
    model: nn.Module
    cfg: ModelCfg
    weights_sha256: str
    init_seed: int | None = None                 # set for a seeded random initialisation
    # The input settings of the views the checkpoint's model was trained on, and where they came from.
    views: dict[str, Any] = field(default_factory=dict)
    views_from: str | None = None

    def identity(self) -> dict[str, Any]:
        """The teacher's part of a cache fingerprint (no file paths: a moved file still matches)."""
        out = {"name": self.cfg.name, "kwargs": self.cfg.kwargs, "weights_sha256": self.weights_sha256}
        if self.init_seed is not None:
            out["random_init_seed"] = self.init_seed
        return out

    def describe(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.model.parameters())
        v = self.views
        out = {**self.identity(), "input_size": v.get("size", self.cfg.input_size),
               "mean": list(v.get("mean", self.cfg.mean)), "std": list(v.get("std", self.cfg.std)),
               "interpolation": v.get("interpolation", self.cfg.interpolation), "parameters": n_params}
        if self.views_from:
            out["input_from"] = self.views_from
        return out


def build_teacher(spec: TeacherSpec, *, num_classes: int) -> LoadedTeacher:
    """Create the teacher in eval mode on CPU.

    ``spec.weights`` may be a kdcache checkpoint (then ``spec.name`` is optional and must match
    when given) or any state dict for the named architecture. Without weights the teacher is
    refused unless ``spec.random_init`` asks for a seeded initialisation (see the module docstring).
    """
    views: dict[str, Any] = {}
    views_from = None
    if spec.weights and is_kdcache_checkpoint(spec.weights):
        model, extra = load_checkpoint(spec.weights)
        cfg = model_cfg(model)
        if spec.name and spec.name != cfg.name:
            raise ModelError(f"`teacher` {spec.name!r} but {spec.weights} holds a {cfg.name!r} model")
        recorded = extra.get("view_spec")
        if isinstance(recorded, dict):
            views = {k: recorded[k] for k in VIEW_INPUT_KEYS if k in recorded}
            views_from = f"the views {spec.weights} was trained on" if views else None
    else:
        if not spec.name:
            raise ModelError("name a teacher with `teacher` (or pass a kdcache checkpoint as `teacher_weights`)")
        if spec.random_init:
            with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random state untouched
                torch.manual_seed(spec.init_seed)
                model = create_model(spec.name, num_classes=num_classes, **(spec.kwargs or {}))
        else:
            model = create_model(spec.name, num_classes=num_classes, **(spec.kwargs or {}))
        if spec.weights:
            load_weights(model, spec.weights)
        elif not spec.random_init and not _loads_own_weights(spec):
            raise ModelError(f"teacher {spec.name!r} has no weights: give `teacher_weights` (a checkpoint or state "
                             "dict) or pretrained=true in `teacher_args`; a randomly initialised teacher "
                             "(tests, benchmarks) must be asked for with `random_init`")
        cfg = model_cfg(model)
    got = cfg.kwargs.get("num_classes")
    if got is not None and int(got) != num_classes:
        raise ModelError(f"teacher {cfg.name!r} has {got} classes but the dataset has {num_classes}")
    model.eval()
    return LoadedTeacher(model=model, cfg=cfg, weights_sha256=state_dict_sha256(model),
                         init_seed=spec.init_seed if spec.random_init else None, views=views, views_from=views_from)


TargetForward = Callable[[torch.Tensor], "tuple[torch.Tensor | None, torch.Tensor | None]"]


def target_forward(model: nn.Module, *, logits: bool = True, embedding: bool = False) -> TargetForward:
    """The teacher's forward for a cache's targets: ``x -> (logits, embedding)``, each None when not asked for.

    The embedding is the pooled pre-logits vector (:func:`~kdcache.models.pooled_embedder`), taken in the same
    forward pass as the logits. A teacher that gives no logits (no class head) when they are asked for is a
    one-line :class:`ModelError`."""
    if not embedding:
        return lambda x: (model(x), None)
    from kdcache.models import pooled_embedder

    embedder = pooled_embedder(model)

    def run(x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out, emb = embedder(x)
        if logits and out is None:
            raise ModelError(f"teacher {embedder.name!r} has no class head ({embedder.source} gives no logits): "
                             "store its embedding alone with targets 'none+pooled:float16' (or ':int8')")
        return (out if logits else None), emb

    return run


def embedding_dim(model: nn.Module, size: int, *, logits: bool) -> int:
    """The length of the teacher's pooled embedding, from one forward pass of a blank ``size`` × ``size`` view
    (on the CPU, before a cache is made; a teacher without logits when ``logits`` is asked for is refused here)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _, emb = target_forward(model, logits=logits, embedding=True)(torch.zeros(1, 3, int(size), int(size)))
    finally:
        model.train(was_training)
    return int(emb.shape[1])
