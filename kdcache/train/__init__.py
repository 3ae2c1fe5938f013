"""Training: losses, the epoch view schedule, optimisers and model EMA, one loop, and the teacher/student runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache._lazy import lazy_names

if TYPE_CHECKING:
    from kdcache.train._ema import ModelEma
    from kdcache.train._evaluate import evaluate_checkpoint, evaluate_model
    from kdcache.train._feature import Embedded, StudentWithFeatures
    from kdcache.train._loop import evaluate, train_one_epoch
    from kdcache.train._lossconfig import LossConfig
    from kdcache.train._losses import DistillationLoss, ensemble_logits, soft_labels, teacher_log_probs
    from kdcache.train._optim import build_optimizer, param_groups
    from kdcache.train._runner import train_student, train_teacher
    from kdcache.train._schedule import epoch_views
    from kdcache.train._trainconfig import TrainConfig

# name -> the module that defines it, imported on first access (the configs need no torch; training does)
_LAZY = {"ModelEma": "._ema", "evaluate_checkpoint": "._evaluate", "evaluate_model": "._evaluate",
         "Embedded": "._feature", "StudentWithFeatures": "._feature", "LossConfig": "._lossconfig", "evaluate": "._loop",
         "train_one_epoch": "._loop", "DistillationLoss": "._losses", "ensemble_logits": "._losses",
         "soft_labels": "._losses", "teacher_log_probs": "._losses", "build_optimizer": "._optim",
         "param_groups": "._optim", "train_student": "._runner", "train_teacher": "._runner", "epoch_views": "._schedule",
         "TrainConfig": "._trainconfig"}

__all__ = [
    "ensemble_logits",
    "DistillationLoss",
    "Embedded",
    "LossConfig",
    "ModelEma",
    "TrainConfig",
    "build_optimizer",
    "epoch_views",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_model",
    "param_groups",
    "StudentWithFeatures",
    "soft_labels",
    "teacher_log_probs",
    "train_one_epoch",
    "train_student",
    "train_teacher",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
