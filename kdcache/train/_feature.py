"""Feature distillation: the student's pooled embedding, through a learned projection, matches the teacher's.

As timm's ``FeatureDistillationTask`` does it: the student's pre-logits vector (:func:`~kdcache.models.pooled_embedder`,
the same definition a cache's ``embedding`` uses for the teacher) goes through a linear projection to the
teacher's dimension (an identity when the two dimensions are equal), and a loss compares it with the teacher's
vector of the same view: ``cosine`` (1 − cosine similarity), ``smooth_l1`` or ``mse``. The projection is trained
with the student and saved in the run's checkpoints (``feature_head``) for resume; it is not part of the student
a checkpoint exports.

:class:`StudentWithFeatures` is the module the training loop runs (and DDP wraps, so gradients of the student and
the projection are reduced together): its forward gives :class:`Embedded` (the student's usual output and the
projected embedding) in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ConfigError
from kdcache.models import pooled_embedder
from kdcache.train._lossconfig import FEATURE_LOSSES

__all__ = ["Embedded", "StudentWithFeatures", "feature_loss", "student_embedding_dim",
           "outputs_logits"]



@dataclass
class Embedded:
    """A student's output with its projected embedding: ``logits`` is what the model returns (a tensor, or a
    DeiT's ``(cls, dist)`` pair in training), ``embedding`` the (B, D_teacher) projection of its pre-logits."""

    logits: Any
    embedding: torch.Tensor


def outputs_logits(out: Any) -> Any:
    """The model's own output inside :class:`Embedded` (anything else as it is)."""
    return out.logits if isinstance(out, Embedded) else out


class StudentWithFeatures(nn.Module):
    """The student and its projection head, run together: ``forward(x) -> Embedded``."""

    def __init__(self, student: nn.Module, teacher_dim: int, size: int):
        super().__init__()
        self.student = student
        self._embed = pooled_embedder(student)
        dim = student_embedding_dim(student, size)
        self.head: nn.Module = nn.Identity() if dim == teacher_dim else nn.Linear(dim, int(teacher_dim))

    def forward(self, x: torch.Tensor) -> Embedded:
        logits, emb = self._embed(x)
        if logits is None:
            raise ConfigError("the student gives no logits (no class head); a student needs one")
        return Embedded(logits, self.head(emb))


def student_embedding_dim(student: nn.Module, size: int) -> int:
    """The length of the student's pooled embedding (one forward of a blank ``size``-px view, in eval mode, no
    gradients)."""
    was = student.training
    student.eval()
    try:
        param = next(student.parameters(), None)
        x = torch.zeros(1, 3, int(size), int(size), device=param.device if param is not None else "cpu")
        with torch.no_grad():
            _, emb = pooled_embedder(student)(x)
    finally:
        student.train(was)
    return int(emb.shape[1])


def feature_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of ``kind`` between the projected student embedding and the teacher's."""
    if pred.shape != target.shape:
        raise ConfigError(f"the projected student embedding has shape {tuple(pred.shape)}, the teacher's "
                          f"{tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ConfigError(f"feature loss must be one of {', '.join(FEATURE_LOSSES)}, got {kind!r}")
