"""One training loop for teachers and students: ``train_one_epoch`` and ``evaluate``.

Batches are :class:`~kdcache._views.ViewBatch` objects (views built in workers); the
labels of a batch are looked up by sample index here, in the main process, and its teacher
targets come from a target source (``kdcache.train._targets``): the cache's arrays read once per
epoch — never a store read per sample — or, for the online reference, the teacher's forward pass.
"""

from __future__ import annotations

import contextlib
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
from kdcache.train._feature import outputs_logits
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


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler, grad_clip: float | None) -> None:
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(optimizer)
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


_PARTS = ("loss", "task_loss", "kd_loss", "feature_loss")


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
    precision: str | None = None,
    accum_steps: int = 1,
    ema=None,
    channels_last: bool = False,
    log_interval: int = 50,
) -> dict[str, float]:
    """Train for one pass over ``loader``; returns mean loss parts, images/s and the final lr.

    ``teacher_targets``: a target source (``kdcache.train._targets``), or the epoch's cached target
    arrays indexed by sample (wrapped in :class:`CachedTargets`); None trains from labels only.

    ``accum_steps`` K: the optimiser (and the scheduler, the EMA, the grad scaler) steps once per K
    batches, on the mean of their losses (a group cut short by the end of the loader is averaged over
    the batches it has, when the loader has a length). ``ema``: a :class:`~kdcache.train._ema.ModelEma`
    updated after every optimiser step. Losses and teacher agreement accumulate on the device; the
    host reads them back once per ``log_interval`` batches (finiteness check, progress bar) and once
    at the end, so a diverging loss is reported at the first read-back after it. ``steady_images_per_second``
    (when the epoch has more than one logging interval) counts from the first read-back on.
    """
    if isinstance(teacher_targets, Mapping):
        teacher_targets = CachedTargets(teacher_targets)
    if accum_steps < 1 or log_interval < 1:
        raise KdcacheError(f"accum_steps and log_interval must be >= 1, got {accum_steps} and {log_interval}")
    model.train()
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    # On the device: the batch-size-weighted loss parts and the teacher-agreement count.
    sums = torch.zeros(len(_PARTS) + 1, device=device, dtype=torch.float64)
    n_seen = 0
    pending = 0  # batches whose gradients wait for the optimiser step
    host = {"at": 0, "n": 0, "sums": [0.0] * (len(_PARTS) + 1), "t": 0.0}  # the last read-back
    first: dict[str, float] = {}  # the first read-back: the steady rate is measured from there

    def read_back(upto: int) -> None:
        vals = sums.tolist()  # the one device read-back of the interval
        if not all(math.isfinite(v) for v in vals):
            raise KdcacheError(f"loss became {vals[0]} within steps {host['at']}-{upto - 1} of {desc}; "
                               "lower the learning rate")
        if n_seen > host["n"]:
            bar.set_postfix(loss=f"{(vals[0] - host['sums'][0]) / (n_seen - host['n']):.3f}")
        host.update(at=upto, n=n_seen, sums=vals, t=time.perf_counter())
        first.setdefault("n", n_seen)
        first.setdefault("t", host["t"])

    t0 = time.perf_counter()
    with_argmax = False  # the teacher's targets carry an argmax (not an embedding alone)
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)
    step = 0
    for step, batch in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            step -= 1
            break
        x = batch.images.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = label_targets(batch, labels, loss_fn.num_classes, device)
        teacher = teacher_targets(batch, x) if teacher_targets is not None else None
        group = step - step % accum_steps
        group_len = accum_steps if total is None else min(accum_steps, total - group)
        stepping = step - group == group_len - 1
        with (model.no_sync() if ddp and not stepping else contextlib.nullcontext()):
            with autocast(device, amp, precision=precision):
                out = model(x)
                parts = loss_fn(out, y, teacher)
            loss = parts["loss"] / group_len
            (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()
        pending += 1
        if stepping:
            _optimizer_step(model, optimizer, scaler, grad_clip)
            pending = 0
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(model)
        bs = x.shape[0]
        n_seen += bs
        if teacher is not None and "argmax" in teacher:
            with_argmax = True
            logits = outputs_logits(out)
            logits = logits[1] if isinstance(logits, (tuple, list)) else logits
            agreed = (logits.detach().argmax(1) == teacher["argmax"].to(logits.device).long()).sum()
        else:
            agreed = sums.new_zeros(())
        sums += torch.stack([*(parts[k].detach().double() * bs for k in _PARTS), agreed.double()])
        if (step + 1) % log_interval == 0:
            read_back(step + 1)
    if pending:  # a loader without a length ended inside an accumulation group
        _optimizer_step(model, optimizer, scaler, grad_clip)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
    if host["n"] != n_seen or not n_seen:
        read_back(step + 1)
    seconds = time.perf_counter() - t0
    *part_sums, n_agree = host["sums"]
    stats = {k: v / max(n_seen, 1) for k, v in zip(_PARTS, part_sums)}
    stats.update(images=n_seen, images_per_second=n_seen / seconds if seconds > 0 else 0.0, seconds=seconds,
                 lr=optimizer.param_groups[0]["lr"])
    if n_seen > first["n"] and host["t"] > first["t"]:
        # after the first logging interval: without worker start-up, first-batch latency and warm-up
        stats["steady_images_per_second"] = (n_seen - first["n"]) / (host["t"] - first["t"])
    if teacher_targets is not None and with_argmax:
        stats["teacher_agreement"] = n_agree / max(n_seen, 1)
    return stats


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: bool = False,
             progress: bool = False, precision: str | None = None, channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy over ``loader`` of (images, labels)."""
    was_training = model.training
    model.eval()
    n = top1 = top5 = 0
    loss_sum = 0.0
    for x, y in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, precision=precision):
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
