"""Training: losses, the epoch view schedule, optimisers and model EMA, one loop, and the teacher/student runs."""

from kdcache.train._ema import ModelEma
from kdcache.train._evaluate import evaluate_checkpoint, evaluate_model
from kdcache.train._feature import Embedded, StudentWithFeatures
from kdcache.train._loop import evaluate, train_one_epoch
from kdcache.train._losses import (
    DistillationLoss,
    LossConfig,
    ensemble_logits,
    soft_labels,
    teacher_log_probs,
)
from kdcache.train._optim import build_optimizer, param_groups
from kdcache.train._runner import train_student, train_teacher
from kdcache.train._schedule import epoch_views
from kdcache.train._trainconfig import TrainConfig

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
