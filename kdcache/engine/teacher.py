"""Build a teacher for the dump or verification: model + weights + identity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdcache.config import ConfigBase
from kdcache.errors import ModelError
from kdcache.models import ModelCfg, create_model, model_cfg
from kdcache.models.checkpoint import is_kdcache_checkpoint, load_checkpoint, load_weights

__all__ = ["TeacherSpec", "LoadedTeacher", "build_teacher", "state_dict_sha256"]


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes), independent of file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherSpec(ConfigBase):
    """Which teacher: a registered/torchvision/timm/hf/python name and/or a weights file or directory."""

    name: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedTeacher:
    model: nn.Module
    cfg: ModelCfg
    weights_sha256: str

    def identity(self) -> dict[str, Any]:
        """The teacher's part of a cache fingerprint (no file paths: a moved file still matches)."""
        return {"name": self.cfg.name, "kwargs": self.cfg.kwargs, "weights_sha256": self.weights_sha256}

    def describe(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {**self.identity(), "input_size": self.cfg.input_size, "mean": list(self.cfg.mean),
                "std": list(self.cfg.std), "interpolation": self.cfg.interpolation, "parameters": n_params}


def build_teacher(spec: TeacherSpec, *, num_classes: int) -> LoadedTeacher:
    """Create the teacher in eval mode on CPU.

    ``spec.weights`` may be a kdcache checkpoint (then ``spec.name`` is optional and must match
    when given) or any state dict for the named architecture.
    """
    if spec.weights and is_kdcache_checkpoint(spec.weights):
        model, _ = load_checkpoint(spec.weights)
        cfg = model_cfg(model)
        if spec.name and spec.name != cfg.name:
            raise ModelError(f"`teacher` {spec.name!r} but {spec.weights} holds a {cfg.name!r} model")
    else:
        if not spec.name:
            raise ModelError("name a teacher with `teacher` (or pass a kdcache checkpoint as `teacher_weights`)")
        model = create_model(spec.name, num_classes=num_classes, **(spec.kwargs or {}))
        if spec.weights:
            load_weights(model, spec.weights)
        cfg = model_cfg(model)
    got = cfg.kwargs.get("num_classes")
    if got is not None and int(got) != num_classes:
        raise ModelError(f"teacher {cfg.name!r} has {got} classes but the dataset has {num_classes}")
    model.eval()
    return LoadedTeacher(model=model, cfg=cfg, weights_sha256=state_dict_sha256(model))
