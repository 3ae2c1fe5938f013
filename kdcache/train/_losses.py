"""Distillation losses and the teacher distributions they need.

* task loss: cross-entropy against (possibly mixed, possibly smoothed) ground-truth labels;
* soft KD: KL(teacher_T || student_T) · T² (Hinton et al.; the Keras and Hugging Face form);
* hard KD: cross-entropy on the teacher's argmax (DeiT's hard distillation);
* an ensemble of a cache's teachers: the weighted mean of their probabilities at T (:func:`ensemble_logits`);
* feature KD: the student's projected pooled embedding against the teacher's (``kdcache.train._feature``).

``loss = (1 − α) · task + α · kd + β · feature``, with β = ``feature_weight`` (0: no feature KD);
``task_weight`` replaces 1 − α (0: no labels at all). A DeiT student returns ``(cls, dist)`` in training: the
class head takes the task loss and the distillation head the KD loss (DeiT); with
``distill="none"`` both heads learn from the labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ConfigError
from kdcache.train._feature import Embedded, feature_loss
from kdcache.train._lossconfig import LossConfig

__all__ = ["LossConfig", "DistillationLoss", "teacher_log_probs", "ensemble_logits", "soft_labels"]

def soft_labels(labels: torch.Tensor, num_classes: int, *, partner_labels: torch.Tensor | None = None,
                lam: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot labels, mixed as ``lam · y + (1 − lam) · y_partner`` for MixUp/CutMix views."""
    y = F.one_hot(labels, num_classes).float()
    if partner_labels is not None and lam is not None:
        yp = F.one_hot(partner_labels, num_classes).float()
        lam = lam.float().unsqueeze(1)
        y = lam * y + (1 - lam) * yp
    return y


def teacher_log_probs(targets: dict[str, torch.Tensor], num_classes: int, temperature: float,
                      fill: str = "spread") -> torch.Tensor:
    """Log of the teacher's softmax at ``temperature`` from cached full or top-k logits.

    Top-k rebuild: ``spread`` gives the C−K missing classes one shared logit ``m`` chosen so that
    their total mass at T=1 equals the recorded tail (``(C−K)·e^m = e^tail_lse``) — exact at T=1,
    an approximation at other temperatures; ``renorm`` keeps only the top-k (softmax over them).
    """
    if "logits" in targets:
        return F.log_softmax(targets["logits"].float() / temperature, dim=1)
    values = targets["topk_values"].float()
    indices = targets["topk_indices"].long()
    k = values.shape[1]
    if fill == "renorm" or k >= num_classes:
        full = values.new_full((values.shape[0], num_classes), float("-inf"))
    else:
        tail = targets["topk_tail_lse"].float() - math.log(num_classes - k)
        full = tail.unsqueeze(1).expand(-1, num_classes).clone()
    full.scatter_(1, indices, values)
    return F.log_softmax(full / temperature, dim=1)


def ensemble_logits(parts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], num_classes: int,
                    temperature: float, fill: str = "spread") -> torch.Tensor:
    """An ensemble's targets as logits: ``T · log Σ_i w_i softmax(z_i / T)`` (weights normalised to sum 1), so
    soft KD at ``T`` learns exactly the weighted mean of the teachers' probabilities at ``T``, and the argmax
    of these logits is the mean's. Each part is one teacher's cached targets (full or top-k)."""
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float32)
    log_w = torch.log(w / w.sum())
    lp = torch.stack([teacher_log_probs(p, num_classes, temperature, fill)
                      + log_w[i].to(next(iter(p.values())).device) for i, p in enumerate(parts)]).logsumexp(dim=0)
    return lp * temperature


class DistillationLoss(nn.Module):
    """``(1 − α) · task + α · kd`` of a student's outputs, usable on its own.

    ``loss_fn(outputs, y, teacher)`` returns ``{"loss", "task_loss", "kd_loss"}`` (the parts detached,
    for logging). ``outputs``: (B, C) logits, or a DeiT student's ``(cls, dist)`` pair. ``y``: (B, C)
    label distribution (mixed labels of MixUp/CutMix views) or (B,) class indices. ``teacher``: the
    batch's cached targets (``logits``, or ``topk_values``/``topk_indices``/``topk_tail_lse``, and
    ``argmax``, as :class:`~kdcache.CacheDataset` yields them), or a (B, C) tensor of teacher logits,
    or None for the task loss alone.
    """

    def __init__(self, cfg: LossConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes

    def _task(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _kd(self, logits: torch.Tensor, teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        if c.distill == "hard":
            return F.cross_entropy(logits.float(), teacher["argmax"].long())
        t_log = teacher_log_probs(teacher, self.num_classes, c.temperature, c.topk_fill)
        s_log = F.log_softmax(logits.float() / c.temperature, dim=1)
        return F.kl_div(s_log, t_log, reduction="batchmean", log_target=True) * c.temperature ** 2

    def forward(self, outputs, y: torch.Tensor, teacher: dict[str, torch.Tensor] | torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``y``: (B, C) label distribution or (B,) classes; ``teacher``: cached targets, logits or None;
        ``outputs``: the model's output, or :class:`~kdcache.train._feature.Embedded` with feature KD."""
        if isinstance(teacher, torch.Tensor):
            teacher = {"logits": teacher, "argmax": teacher.argmax(dim=1)}
        embedding = outputs.embedding if isinstance(outputs, Embedded) else None
        outputs = outputs.logits if isinstance(outputs, Embedded) else outputs
        two_heads = isinstance(outputs, (tuple, list))
        cls_out, dist_out = (outputs[0], outputs[1]) if two_heads else (outputs, outputs)
        task = self._task(cls_out, y)
        w_task, w_kd, w_feat = self.cfg.weights
        zero = task.new_zeros(())
        feat = zero
        if w_feat and teacher is not None:
            if embedding is None or "embedding" not in teacher:
                raise ConfigError("feature distillation needs the student's projected embedding and the teacher's")
            feat = feature_loss(self.cfg.feature_loss, embedding, teacher["embedding"])
        if self.cfg.distill == "none" or teacher is None:
            if two_heads:
                task = (task + self._task(dist_out, y)) / 2
            # no teacher at all (a labels-only batch): the label loss alone, whatever the weights
            loss = task if teacher is None or (w_task == 1 and not w_feat) else w_task * task + w_feat * feat
            return {"loss": loss, "task_loss": task.detach(), "kd_loss": zero, "feature_loss": feat.detach()}
        kd = self._kd(dist_out, teacher)
        loss = w_task * task + w_kd * kd
        if w_feat:
            loss = loss + w_feat * feat
        return {"loss": loss, "task_loss": task.detach(), "kd_loss": kd.detach(), "feature_loss": feat.detach()}
