"""``TrainConfig``: every setting of a training run (teacher or student), validated where it is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdcache._config import PRECISIONS, ConfigBase
from kdcache._teacher_spec import TeacherSpec
from kdcache._utils import check_model_kwargs
from kdcache.data._config import DataConfig
from kdcache.errors import ConfigError
from kdcache.train._lossconfig import LossConfig

__all__ = ["DECAY_RULES", "SCHEDULES", "TrainConfig"]

DECAY_RULES = ("timm", "all")        # which parameters weight decay applies to (kdcache.train._optim)
SCHEDULES = ("cosine", "constant")   # the learning-rate schedules after warm-up


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    data: DataConfig
    out: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None            # students: the teacher cache; teachers: None
    teacher: TeacherSpec | None = None  # students: an online teacher run at every step (the reference)
    # students: the cache's own teachers (loss.teachers, loss.feature_teacher) run online on fresh views of the
    # cache's view spec at every step, instead of reading their cached targets: a cached row's online reference
    online_cache_teachers: bool = False
    # Model selection (best.pt) on `val_split`, never the test split by default: "auto" is the held-out `val`
    # split when `data.val_fraction` > 0, else none (best.pt is then the last epoch). `test_split` is evaluated
    # once, on best.pt, after the last epoch: "auto" is the data's `test` split when it has one.
    val_split: str | None = "auto"
    test_split: str | None = "auto"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    view: dict[str, Any] = field(default_factory=dict)  # teachers, cacheless online students: ViewSpec overrides
    init_weights: str | None = None     # fine-tune: start from these weights
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    grad_clip: float | None = None
    resume: bool = False
    overwrite: bool = False             # replace the checkpoints and metrics of a run already in `out`
    max_steps_per_epoch: int | None = None
    storage_options: dict[str, Any] | None = None
    views_per_image: int = 1            # cached students: M cached views from each decoded image (FKD)
    target_memory_mb: int = 1024        # cached students: targets resident at once per rank (streamed in windows)
    repeated_views: int = 1             # cached students: each epoch N/R images x R of their cached views (DeiT's RA)
    # the recipe (kdcache.train._optim, _ema): optimiser, decay rule, EMA, precision, accumulation
    optimizer: str = "adamw"            # adamw | sgd | a timm optimiser name (lamb, lars, ...) when timm is installed
    sched: str = "cosine"               # cosine (after `warmup_epochs`, to `min_lr`) | constant (after the warm-up)
    decay_rule: str = "timm"            # timm: no decay on norms, biases, tokens; all: every parameter (Keras, TFA)
    momentum: float = 0.9               # SGD (and timm optimisers that take one)
    nesterov: bool = False
    scale_lr: bool = False              # lr × batch_size × accum_steps × world_size / 512 (DeiT)
    ema_decay: float | None = None      # model EMA (None: off), in (0, 1)
    ema_warmup: bool = True             # decay min(ema_decay, (1 + t) / (10 + t)) at update t
    ema_select: bool = False            # the EMA is the checkpoints' model (best.pt chosen by its val top-1)
    precision: str = "fp32"             # fp32 | bf16 | fp16 (autocast; fp16 with a grad scaler)
    channels_last: bool = False
    compile: bool = False               # torch.compile the student
    compile_backend: str = "inductor"   # torch.compile's backend (aot_eager: traced, not code-generated)
    accum_steps: int = 1                # optimiser step every K batches (global batch = batch_size × K × ranks)
    log_interval: int = 50              # batches between the loop's device read-backs

    def __post_init__(self):
        super().__post_init__()
        check_model_kwargs(self.model_kwargs, "model_args")
        for name in ("epochs", "batch_size", "views_per_image", "target_memory_mb", "accum_steps", "log_interval",
                     "repeated_views"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)!r}")
        m = self.views_per_image
        if m > 1 and self.epochs % m:
            raise ConfigError(f"`epochs` ({self.epochs}) must be a multiple of `views_per_image` ({m}): "
                              f"each pass over the decoded images trains {m} epochs' worth of views")
        if m > 1 and self.repeated_views > 1:
            raise ConfigError("`repeated_views` and `views_per_image` both replay several cached views of each "
                              "decoded image; choose one: `repeated_views` R keeps an epoch at N samples "
                              "(N/R images x R views), `views_per_image` M trains M epochs per pass")
        if self.lr <= 0 or self.warmup_epochs < 0 or self.workers < 0:
            raise ConfigError("lr must be > 0, warmup epochs and workers >= 0")
        if self.sched not in SCHEDULES:
            raise ConfigError(f"`sched` must be one of {', '.join(SCHEDULES)}, got {self.sched!r}")
        if self.decay_rule not in DECAY_RULES:
            raise ConfigError(f"`decay_rule` must be one of {', '.join(DECAY_RULES)}, got {self.decay_rule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.amp and self.precision != "fp32":
            raise ConfigError("`amp` (bf16 or fp16 on CUDA, whichever the GPU supports) and `precision` "
                              f"{self.precision!r} exclude each other: give one")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"`ema_decay` must be in (0, 1), e.g. 0.9998, got {self.ema_decay!r}")
        if self.ema_select and self.ema_decay is None:
            raise ConfigError("`ema_select` makes the EMA the checkpoints' model: it needs `ema_decay`")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"`momentum` must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and (self.optimizer.lower() != "sgd" or self.momentum == 0):
            raise ConfigError("`nesterov` is SGD's Nesterov momentum: it needs `optimizer` sgd and `momentum` > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if self.online_cache_teachers and (self.cache is None or self.teacher is not None):
            raise ConfigError("`online_cache_teachers` runs the teachers of `cache` online: it needs `cache`, and "
                              "excludes `teacher` (one online teacher of your choice)")
        if self.resume and self.overwrite:
            raise ConfigError("`resume` and `overwrite` exclude each other: continue the run in `out` or replace it")
