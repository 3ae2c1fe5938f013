"""One training loop for teachers and students: ``train_one_epoch`` and ``evaluate``.

Batches are :class:`~kdcache._views.ViewBatch` objects (views built in workers); the
labels of a batch are looked up by sample index here, in the main process, and its teacher
targets come from a target source (``kdcache.train._targets``): the cache's arrays read once per
epoch — never a store read per sample — or, for the online reference, the teacher's forward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kdcache._runtime import autocast
from kdcache._views import ViewBatch
from kdcache.errors import KdcacheError
from kdcache.train._losses import DistillationLoss, soft_labels
from kdcache.train._targets import CachedTargets, TargetSource

__all__ = ["train_one_epoch", "evaluate", "label_targets"]


def label_targets(batch: ViewBatch, labels: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor:
    """(B, C) ground-truth distribution of the batch's views (mixed for MixUp/CutMix views)."""
    idx = batch.indices
    y = torch.as_tensor(labels[idx], dtype=torch.long)
    partners = np.array([p.partner for p in batch.params])
    if (partners >= 0).any():
        lam = torch.tensor([p.lam if p.partner >= 0 else 1.0 for p in batch.params], dtype=torch.float32)
        yp = torch.as_tensor(labels[np.where(partners >= 0, partners, idx)], dtype=torch.long)
        y_dist = soft_labels(y, num_classes, partner_labels=yp, lam=lam)
    else:
        y_dist = soft_labels(y, num_classes)
    return y_dist.to(device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[ViewBatch],
    *,
    loss_fn: DistillationLoss,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    labels: np.ndarray,
    teacher_targets: TargetSource | Mapping[str, np.ndarray] | None = None,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: bool = True,
    desc: str = "train",
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; returns mean loss parts, images/s and the final lr.

    ``teacher_targets``: a target source (``kdcache.train._targets``), or the epoch's cached target
    arrays indexed by sample (wrapped in :class:`CachedTargets`); None trains from labels only.
    """
    if isinstance(teacher_targets, Mapping):
        teacher_targets = CachedTargets(teacher_targets)
    model.train()
    sums: dict[str, float] = {}
    n_seen = 0
    agree = 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)
    for step, batch in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        x = batch.images.to(device, non_blocking=True)
        y = label_targets(batch, labels, loss_fn.num_classes, device)
        teacher = teacher_targets(batch, x) if teacher_targets is not None else None
        with autocast(device, amp):
            out = model(x)
            parts = loss_fn(out, y, teacher)
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise KdcacheError(f"loss became {loss.item()} at step {step} of {desc}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        bs = x.shape[0]
        n_seen += bs
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * bs
        if teacher is not None:
            logits = out[1] if isinstance(out, (tuple, list)) else out
            agree += int((logits.detach().argmax(1) == teacher["argmax"].long()).sum())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    seconds = time.perf_counter() - t0
    stats = {k: v / max(n_seen, 1) for k, v in sums.items()}
    stats.update(images=n_seen, images_per_second=n_seen / seconds if seconds > 0 else 0.0, seconds=seconds,
                 lr=optimizer.param_groups[0]["lr"])
    if teacher_targets is not None:
        stats["teacher_agreement"] = agree / max(n_seen, 1)
    return stats


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: bool = False,
             progress: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy over ``loader`` of (images, labels)."""
    was_training = model.training
    model.eval()
    n = top1 = top5 = 0
    loss_sum = 0.0
    for x, y in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 += int((topk[:, 0] == y).sum())
        top5 += int((topk == y[:, None]).any(dim=1).sum())
        n += y.shape[0]
    model.train(was_training)
    if n == 0:
        return {"top1": math.nan, "top5": math.nan, "loss": math.nan, "images": 0}
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss_sum / n, "images": n}
