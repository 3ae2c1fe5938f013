"""Training: losses, the epoch view schedule, one loop, and the teacher/student runs."""

from kdcache.train._loop import evaluate, train_one_epoch
from kdcache.train._losses import DistillationLoss, LossConfig, soft_labels, teacher_log_probs
from kdcache.train._runner import (
    TrainConfig,
    evaluate_checkpoint,
    evaluate_model,
    train_student,
    train_teacher,
)
from kdcache.train._schedule import epoch_views

__all__ = [
    "DistillationLoss",
    "LossConfig",
    "TrainConfig",
    "epoch_views",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_model",
    "soft_labels",
    "teacher_log_probs",
    "train_one_epoch",
    "train_student",
    "train_teacher",
]
