"""Where a batch's teacher targets come from: the cache, or the teacher itself at every step.

A target source is a callable ``source(batch, images) -> dict[str, Tensor]`` giving, for the
batch's views, the dict the loss reads (``logits`` or ``topk_*``, and ``argmax``), on the
device of ``images`` (the batch's views as the student receives them).

* :class:`CachedTargets` looks the epoch's cached targets up by sample index (arrays read
  from the cache once per epoch) and decodes them (``decode_targets``); it never sees a teacher.
* :class:`TeacherTargets` joins several teachers' sources (a cache's teachers by name): the logit teachers'
  targets, one passed through or several as their ensemble (``ensemble_logits``), and the feature teacher's
  embedding.
* :class:`OnlineTargets` runs the teacher on the very views the student trains on, every step
  (online, "consistent teaching" distillation): the reference that cached training is measured
  against, through the same loop, loss, optimiser and schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from kdcache._runtime import autocast
from kdcache._teacher import target_forward
from kdcache._views import ViewBatch, split_batch
from kdcache.cache._targets import decode_targets
from kdcache.train._losses import ensemble_logits

__all__ = ["TargetSource", "CachedTargets", "OnlineTargets", "TeacherTargets", "by_slot"]


class TargetSource(Protocol):
    def __call__(self, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


def by_slot(source: TargetSource, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A merged batch's targets (``ViewBatch.parts``: repeated views), each slot's from ``source``, in order."""
    outs = [source(part, images) for part in split_batch(batch)]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


class CachedTargets:
    """Targets of the epoch's cached views: ``arrays[name]`` is (N, ...) indexed by sample.

    With several views per decoded image, a sequence of such mappings, one per ``ViewBatch.slot``."""

    def __init__(self, arrays: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]):
        self.slots = [dict(arrays)] if isinstance(arrays, Mapping) else [dict(a) for a in arrays]
        self.arrays = self.slots[0]

    def __call__(self, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if batch.parts:
            return by_slot(self, batch, images)
        idx = batch.indices
        # decoded on the CPU (uint16 increments have little device support), then moved
        decoded = decode_targets({k: np.asarray(v[idx]) for k, v in self.slots[batch.slot].items()})
        return {k: torch.as_tensor(v).to(images.device, non_blocking=True) for k, v in decoded.items()}


class OnlineTargets:
    """Full targets (float32 ``logits`` and their ``argmax``, and with ``embedding`` the teacher's pooled
    ``embedding``) from the teacher's forward pass on the batch's views, the same targets a cache holds. The
    teacher runs in eval mode under ``inference_mode`` on the images' device."""

    def __init__(self, model: nn.Module, *, amp: bool = False, precision: str | None = None, logits: bool = True,
                 embedding: bool = False):
        self.model = model.eval()
        self.amp, self.precision = amp, precision
        self.forward = target_forward(self.model, logits=logits, embedding=embedding)

    def __call__(self, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), autocast(images.device, self.amp, precision=self.precision):
            out, emb = self.forward(images)
        # Normal tensors (not inference tensors), so the loss may save them for its backward pass.
        targets = {}
        if out is not None:
            logits = out.float().clone()
            targets.update(logits=logits, argmax=logits.argmax(dim=1))
        if emb is not None:
            targets["embedding"] = emb.float().clone()
        return targets


class TeacherTargets:
    """Targets from several of a cache's teachers: ``sources[name]`` gives teacher ``name``'s decoded targets.

    ``logit_teachers``: whose logits the loss learns from (one: its targets as they are; several: the weighted
    mean of their probabilities at ``loss.temperature``, as logits with their argmax, ``ensemble_logits``);
    ``feature_teacher``: whose ``embedding`` feature distillation matches (None: none)."""

    def __init__(self, sources: Mapping[str, TargetSource], logit_teachers: Sequence[str], weights: Sequence[float],
                 feature_teacher: str | None, *, num_classes: int, temperature: float, fill: str = "spread"):
        self.sources = dict(sources)
        self.logit_teachers, self.feature_teacher = list(logit_teachers), feature_teacher
        self.weights = list(weights) or [1.0] * len(self.logit_teachers)
        self.num_classes, self.temperature, self.fill = num_classes, temperature, fill

    def __call__(self, batch: ViewBatch, images: torch.Tensor) -> dict[str, torch.Tensor]:
        got = {n: src(batch, images) for n, src in self.sources.items()}
        parts = [{k: v for k, v in got[t].items() if k != "embedding"} for t in self.logit_teachers]
        out: dict[str, torch.Tensor] = {}
        if len(parts) == 1:
            out.update(parts[0])
        elif parts:
            logits = ensemble_logits(parts, self.weights, self.num_classes, self.temperature, self.fill)
            out.update(logits=logits, argmax=logits.argmax(dim=1))
        if self.feature_teacher is not None:
            out["embedding"] = got[self.feature_teacher]["embedding"]
        return out

    def close(self) -> None:
        for src in self.sources.values():
            if hasattr(src, "close"):
                src.close()
