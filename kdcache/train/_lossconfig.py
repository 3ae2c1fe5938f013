"""How a student learns (:class:`LossConfig`): torch-free, so configs and the CLI's options need no torch; the
losses themselves are ``kdcache.train._losses``."""

from __future__ import annotations

from dataclasses import dataclass

from kdcache._config import ConfigBase
from kdcache.errors import ConfigError

__all__ = ["DISTILL", "FEATURE_LOSSES", "LossConfig", "TOPK_FILL"]

DISTILL = ("soft", "hard", "none")
TOPK_FILL = ("spread", "renorm")
FEATURE_LOSSES = ("cosine", "smooth_l1", "mse")


@dataclass(frozen=True)
class LossConfig(ConfigBase):
    """How a student learns: ``distill`` (``soft``, ``hard`` or ``none`` = labels only), the KD weight
    ``alpha``, the softmax ``temperature`` of soft KD, ``label_smoothing`` of the task loss and
    ``topk_fill``, how a top-k cache's missing classes are rebuilt (see :func:`teacher_log_probs`);
    ``feature_weight`` β of feature distillation (0: none) and its ``feature_loss``; ``task_weight``, the label
    loss's weight when given (default: 1 − α while distilling logits, else 1; 0 trains without labels);
    ``teachers``, whose logits (a cache's teachers by name: ``main`` and those added with ``add-teacher``; several
    make an ensemble, :func:`ensemble_logits`, weighted by ``ensemble_weights``, default equal) and
    ``feature_teacher``, whose embedding feature distillation matches."""

    distill: str = "soft"
    alpha: float = 0.5
    temperature: float = 4.0
    label_smoothing: float = 0.0
    topk_fill: str = "spread"
    feature_weight: float = 0.0
    feature_loss: str = "cosine"
    task_weight: float | None = None
    teachers: tuple[str, ...] = ("main",)        # whose logits: one, or an ensemble (a cache's teachers by name)
    ensemble_weights: tuple[float, ...] = ()     # the ensemble's weights (default equal), one per teacher
    feature_teacher: str = "main"                # whose embedding feature distillation matches

    def __post_init__(self):
        super().__post_init__()
        if self.distill not in DISTILL:
            raise ConfigError(f"distill must be one of {DISTILL}, got {self.distill!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.topk_fill not in TOPK_FILL:
            raise ConfigError(f"topk fill must be one of {TOPK_FILL}, got {self.topk_fill!r}")
        if not self.feature_weight >= 0:
            raise ConfigError(f"`feature_weight` must be >= 0, got {self.feature_weight!r}")
        if self.feature_loss not in FEATURE_LOSSES:
            raise ConfigError(f"`feature_loss` must be one of {', '.join(FEATURE_LOSSES)}, got {self.feature_loss!r}")
        if self.task_weight is not None and not self.task_weight >= 0:
            raise ConfigError(f"`task_weight` must be >= 0, got {self.task_weight!r}")
        if not self.teachers or len(set(self.teachers)) != len(self.teachers):
            raise ConfigError(f"`teachers` must name each teacher once, got {list(self.teachers)}")
        if self.ensemble_weights and (len(self.ensemble_weights) != len(self.teachers)
                                      or min(self.ensemble_weights) < 0 or not sum(self.ensemble_weights) > 0):
            raise ConfigError(f"`ensemble_weights` {list(self.ensemble_weights)} must be one weight >= 0 per teacher "
                              f"({len(self.teachers)}: {', '.join(self.teachers)}), not all 0")
        if self.task_weight == 0 and self.distill == "none" and self.feature_weight == 0:
            raise ConfigError("`task_weight` 0 without distillation or feature distillation leaves nothing to learn")

    @property
    def features(self) -> bool:
        """Whether the student learns from the teacher's embedding."""
        return self.feature_weight > 0

    @property
    def weights(self) -> tuple[float, float, float]:
        """(task, logit KD, feature KD) weights."""
        kd = self.alpha if self.distill != "none" else 0.0
        task = self.task_weight if self.task_weight is not None else (1.0 - kd)
        return float(task), float(kd), float(self.feature_weight)
