"""The student's optimiser: AdamW, SGD (momentum, Nesterov) or a timm optimiser, over two parameter groups.

Weight decay follows timm's rule by default (``timm.optim.param_groups_weight_decay``): a parameter with
``ndim <= 1`` (every norm's weight and bias, every bias) or named in the model's
``no_weight_decay()`` set (a ViT's class and distillation tokens and position embedding) is not
decayed; every other parameter is decayed by ``weight_decay``. ``decay_rule="all"`` decays every parameter
(Keras's and TF-Addons' AdamW). The learning rate follows :func:`build_scheduler` (warm-up, then cosine or
constant).

The learning rate may be scaled by the global batch (``lr × batch × accum_steps × world_size / 512``,
DeiT's rule), off by default. Names other than ``adamw`` and ``sgd`` (``lamb``, ``lars``, ``adan``, ...)
go to ``timm.optim.create_optimizer_v2`` with the same groups when timm is installed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kdcache.errors import ConfigError
from kdcache.train._trainconfig import SCHEDULES

__all__ = ["BUILTIN_OPTIMIZERS", "LR_BASE_BATCH", "build_optimizer", "build_scheduler",
           "param_groups", "scaled_lr"]

BUILTIN_OPTIMIZERS = ("adamw", "sgd")
LR_BASE_BATCH = 512  # DeiT: lr = base_lr × global batch / 512


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the model's parameters that the rule leaves undecayed."""
    skip = set()
    fn = getattr(model, "no_weight_decay", None)
    if callable(fn):
        skip = set(fn())
    return {n for n, p in model.named_parameters() if p.requires_grad and (p.ndim <= 1 or n in skip)}


def param_groups(model: nn.Module, weight_decay: float, decay_rule: str = "timm") -> list[dict]:
    """``[{"params": decayed, "weight_decay": wd}, {"params": undecayed, "weight_decay": 0}]`` (timm's rule;
    ``decay_rule="all"``: every parameter decayed, as Keras's and TF-Addons' AdamW do)."""
    skip = no_decay_names(model) if decay_rule == "timm" else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(lr: float, global_batch: int, scale: bool) -> float:
    """``lr × global_batch / 512`` when ``scale``, else ``lr``."""
    return lr * global_batch / LR_BASE_BATCH if scale else lr


def build_optimizer(model: nn.Module, name: str, *, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, fused: bool | None = None, decay_rule: str = "timm",
                    extra: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimiser ``name`` over :func:`param_groups` of ``model``, and of ``extra`` (a module trained beside
    it, e.g. feature distillation's projection head) appended to the same two groups."""
    both = param_groups(model, weight_decay, decay_rule)
    if extra is not None:
        for group, more in zip(both, param_groups(extra, weight_decay, decay_rule)):
            group["params"] = group["params"] + more["params"]
    groups: Iterable[dict] = [g for g in both if g["params"]]
    name = name.lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused)
    try:
        from timm.optim import create_optimizer_v2, list_optimizers
    except ImportError:
        raise ConfigError(f"optimizer {name!r}: kdcache has {', '.join(BUILTIN_OPTIMIZERS)}; others come from "
                          "timm, which is not installed (pip install timm)") from None
    if name not in list_optimizers():
        raise ConfigError(f"unknown optimizer {name!r}: expected {', '.join(BUILTIN_OPTIMIZERS)} or one of timm's "
                          "(timm.optim.list_optimizers())")
    return create_optimizer_v2(list(groups), opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, sched: str = "cosine", *, steps_per_epoch: int, epochs: int,
                    warmup_epochs: float, min_lr: float):
    """Linear warm-up, then cosine decay to ``min_lr`` (``sched="cosine"``) or the peak rate held to the end
    (``"constant"``), stepped every iteration (torch's schedulers)."""
    if sched not in SCHEDULES:
        raise ConfigError(f"`sched` must be one of {', '.join(SCHEDULES)}, got {sched!r}")
    total = max(1, steps_per_epoch * epochs)
    warm = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
    if sched == "constant":
        after = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        after = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=min_lr)
    if warm <= 0:
        return after
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warm)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, after], milestones=[warm])
