"""``Run``: one run's model, optimiser, schedule, EMA and checkpoints, the epoch loop's driver and resume.

``Run.fit`` drives the one loop (``kdcache.train._loop``) epoch by epoch over what ``epoch_data(epoch)`` gives
(a loader and a teacher target source), evaluates the validation split, writes ``last.pt`` / ``best.pt`` and
``metrics.jsonl``, and finally tests ``best.pt`` once. ``Run._resume`` continues a run from ``last.pt`` bit for
bit, refusing one trained from another cache, teacher or optimiser.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache._runtime import DistContext, resolve_precision, select_device
from kdcache._utils import recordable_config
from kdcache.errors import CacheMismatchError, CheckpointError, ConfigError, KdcacheError
from kdcache.models import create_model, model_cfg
from kdcache.models._checkpoint import load_checkpoint, load_weights, save_checkpoint
from kdcache.train._ema import ModelEma
from kdcache.train._feature import StudentWithFeatures
from kdcache.train._heldout import TEST_FILE
from kdcache.train._logging import MetricsLogger
from kdcache.train._loop import evaluate, train_one_epoch
from kdcache.train._losses import DistillationLoss
from kdcache.train._optim import build_optimizer, build_scheduler, scaled_lr
from kdcache.train._rundir import early_leftovers, remove_leftovers, write_failed
from kdcache.train._targets import TargetSource
from kdcache.train._trainconfig import TrainConfig

__all__ = ["Run", "shard_batches"]


def shard_batches(n: int, *, epoch: int, seed: int, batch_size: int, ctx: DistContext) -> list[list[int]]:
    """This rank's shuffled batches of sample indices (equal count on every rank)."""
    perm = np.random.default_rng([int(seed), int(epoch), 0x7472]).permutation(n)
    per_rank = -(-n // ctx.world_size)
    perm = np.resize(perm, per_rank * ctx.world_size)  # pad by wrapping so ranks stay in step
    mine = perm[ctx.rank::ctx.world_size].tolist()
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's generator for one epoch (or pass) from (seed, epoch, rank): dropout, drop-path and any other
    random op of the training step then draw the same whatever ran before, so a resumed run trains its epochs
    exactly as an uninterrupted one (the checkpoint holds no generator state to restore)."""
    torch.manual_seed(int(np.random.default_rng([int(seed), int(epoch), int(rank), 0x6470]).integers(2**63)))


_OPTIMIZER_FIELDS = ("optimizer", "weight_decay", "momentum", "nesterov", "decay_rule", "sched")  # checked on resume


class Run:
    """State shared by teacher and student runs: model, optimiser, logging, checkpoints."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, *, num_classes: int, num_samples: int,
                 kind: str, log: Callable[[str], None], extra_meta: dict[str, Any],
                 feature_dim: int | None = None, view_size: int | None = None):
        """``feature_dim``: the teacher's embedding length, for feature distillation (a projection head from
        the student's embedding, trained with it; ``view_size``: the training views' size, to measure the
        student's embedding)."""
        self.cfg, self.ctx, self.kind, self.log = cfg, ctx, kind, log
        self.device = select_device(cfg.device, local_rank=ctx.local_rank)
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)
        if cfg.init_weights:
            load_weights(self.model, cfg.init_weights)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # feature distillation: the student and its projection head run (and are reduced) as one module
        self.with_head = StudentWithFeatures(self.model, feature_dim, view_size).to(self.device) \
            if feature_dim else None
        base = self.with_head if self.with_head is not None else self.model
        self.net: nn.Module = _compiled(base, cfg.compile_backend) if cfg.compile else base
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        global_batch = cfg.batch_size * cfg.accum_steps * ctx.world_size
        self.lr = scaled_lr(cfg.lr, global_batch, cfg.scale_lr)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, lr=self.lr, weight_decay=cfg.weight_decay,
                                         momentum=cfg.momentum, nesterov=cfg.nesterov, decay_rule=cfg.decay_rule,
                                         extra=self.with_head.head if self.with_head is not None else None)
        n_batches = len(shard_batches(num_samples, epoch=0, seed=cfg.seed, batch_size=cfg.batch_size, ctx=ctx))
        n_batches = min(n_batches, cfg.max_steps_per_epoch or n_batches)
        self.steps_per_epoch = -(-n_batches // cfg.accum_steps)  # optimiser steps
        self.scheduler = build_scheduler(self.optimizer, cfg.sched, steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs,
                                         warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr)
        self.precision = resolve_precision(self.device, cfg.precision, cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = ModelEma(self.model, decay=cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay else None
        self.loss_fn = DistillationLoss(cfg.loss, num_classes)
        self.meta = {"kind": kind, "config": recordable_config(cfg), **extra_meta}  # no credentials recorded
        self.start_epoch = 0
        self.test_stats: dict[str, Any] | None = None
        # best.pt: highest validation top-1, or the last epoch when there is no validation split
        self.best_score: float | None = None
        self.best_top1: float | None = None
        if cfg.resume:
            self._resume()
        self.metrics = MetricsLogger(cfg.out, enabled=ctx.is_main)
        self.metrics.keep_before(self.start_epoch)  # rows of epochs after last.pt are trained again

    def fit(self, epoch_data: Callable[[int], tuple[DataLoader, TargetSource | None]],
            labels: np.ndarray, val: DataLoader | None, progress: bool, test: DataLoader | None = None) -> dict[str, Any]:
        """The epoch loop: ``epoch_data(epoch)`` gives the epoch's loader and teacher target source; then
        best.pt is evaluated once on ``test``."""
        try:
            return self._fit(epoch_data, labels, val, progress, test)
        except BaseException:
            self.metrics.close()  # release the event files before the run directory is cleaned up
            raise

    def _fit(self, epoch_data, labels: np.ndarray, val: DataLoader | None, progress: bool,
             test: DataLoader | None) -> dict[str, Any]:
        cfg = self.cfg
        if self.ctx.is_main:
            path = os.path.join(cfg.out, "config.json")
            try:
                with open(path, "w") as f:
                    json.dump(self.meta, f, indent=2, default=str)
            except OSError as e:
                raise write_failed(path, e) from e
        # With M views per decoded image, one pass over the data trains M epochs' worth of samples
        # (epochs count samples, not decodes): ``epoch_data(epoch)`` then covers epochs epoch..epoch+M-1.
        m = cfg.views_per_image
        if self.start_epoch % m:
            raise CheckpointError(f"`resume`: the checkpoint ends after epoch {self.start_epoch}, inside a pass "
                                  f"of `views_per_image` {m}; resume with the run's own setting")
        for epoch in range(self.start_epoch, cfg.epochs, m):
            t0 = time.perf_counter()
            seed_epoch(cfg.seed, epoch, self.ctx.rank)
            loader, teacher = epoch_data(epoch)
            last = epoch + m - 1
            desc = f"epoch {epoch + 1}/{cfg.epochs}" if m == 1 else f"epochs {epoch + 1}-{last + 1}/{cfg.epochs}"
            try:
                with _compile_errors(cfg.compile):
                    stats = train_one_epoch(
                        self.net, loader, loss_fn=self.loss_fn, optimizer=self.optimizer, scheduler=self.scheduler,
                        device=self.device, labels=labels, teacher_targets=teacher, precision=self.precision,
                        scaler=self.scaler, grad_clip=cfg.grad_clip, progress=progress and self.ctx.is_main,
                        desc=desc, max_steps=cfg.max_steps_per_epoch and cfg.max_steps_per_epoch * m,
                        accum_steps=cfg.accum_steps, ema=self.ema, channels_last=cfg.channels_last,
                        log_interval=cfg.log_interval)
            finally:
                if hasattr(teacher, "close"):
                    teacher.close()  # a streamed target source stops its reader
            val_stats = self._evaluate(self.model, val)
            if val_stats is not None and self.ema is not None:
                val_stats.update({f"ema_{k}": v for k, v in self._evaluate(self.ema.module, val).items()})
            stats["epoch_seconds"] = time.perf_counter() - t0  # training and validation: the run's wall time
            self.end_epoch(last, stats, val_stats)
            self.ctx.barrier()
        if test is not None and self.ctx.is_main:
            self.test_stats = self._test(test)
        return self.close()

    def _test(self, test: DataLoader) -> dict[str, Any]:
        """best.pt on the test split, once: the run's reported figure (best.pt was selected without it)."""
        model, extra = load_checkpoint(os.path.join(self.cfg.out, "best.pt"))
        model.to(self.device)
        if self.cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        stats = evaluate(model, test, device=self.device, precision=self.precision,
                         channels_last=self.cfg.channels_last)
        selected = f"val top-1 on {self.cfg.val_split!r}" if self.cfg.val_split else "the last epoch"
        record = {"split": self.cfg.test_split, "checkpoint": "best.pt", "epoch": int(extra["epoch"]) + 1,
                  "selected_by": selected, **stats}
        path = os.path.join(self.cfg.out, TEST_FILE)
        try:
            with open(path, "w") as f:
                json.dump(record, f, indent=2)
        except OSError as e:
            raise write_failed(path, e) from e
        self.log(f"test ({self.cfg.test_split!r}, best.pt = epoch {record['epoch']}, selected by {selected}): "
                 f"top1 {stats['top1']:.2f} top5 {stats['top5']:.2f}")
        return record

    def _evaluate(self, model: nn.Module, val: DataLoader | None) -> dict[str, float] | None:
        if val is None:
            return None
        return evaluate(model, val, device=self.device, precision=self.precision,
                        channels_last=self.cfg.channels_last)

    def _resume(self) -> None:
        path = os.path.join(self.cfg.out, "last.pt")
        if not os.path.exists(path):
            early = early_leftovers(self.cfg.out)
            if not early:
                raise CheckpointError(f"`resume`: {self.cfg.out} holds no run to resume (no {path}); drop `resume` "
                                      "to start one")
            self.log(f"{self.cfg.out} holds a run stopped before its first checkpoint ({', '.join(early)}): "
                     "starting it from the beginning")
            self.ctx.barrier()  # every rank has looked before the leftovers go
            if self.ctx.is_main:
                remove_leftovers(self.cfg.out)
            return
        model, extra = load_checkpoint(path)
        if model_cfg(model).name != model_cfg(self.model).name:
            raise CheckpointError(f"`resume`: {path} holds {model_cfg(model).name!r}, not {self.cfg.model!r}")
        if extra.get("cache_fingerprint") != self.meta.get("cache_fingerprint"):
            raise CacheMismatchError(f"`resume`: {path} was trained from another cache")
        if extra.get("online_teacher") != self.meta.get("online_teacher"):
            raise CheckpointError(f"`resume`: {path} was trained with another `teacher` (online)")
        if ("feature_head" in extra) != (self.with_head is not None):
            raise CheckpointError(f"`resume`: {path} was trained {'with' if 'feature_head' in extra else 'without'} "
                                  "feature distillation; resume with the loss it was trained with")
        # With `ema_select` the checkpoint's model is the EMA and the trained weights travel beside it.
        self.model.load_state_dict(extra.get("raw_state_dict") or model.state_dict())
        if self.with_head is not None:
            try:
                self.with_head.head.load_state_dict(extra["feature_head"])
            except RuntimeError as e:
                raise CheckpointError(f"`resume`: {path}'s feature projection does not fit this run's (another "
                                      "teacher embedding or student)") from e
        if self.ema is not None:
            if "ema" not in extra:
                raise CheckpointError(f"`resume`: {path} was trained without an EMA; resume without `ema_decay`")
            ema = dict(extra["ema"])
            ema.setdefault("state_dict", model.state_dict())
            self.ema.load_state_dict(ema)
        then, now = extra.get("config") or {}, self.meta["config"]
        diff = [f"`{k}` {then[k]!r} there, {now.get(k)!r} here" for k in _OPTIMIZER_FIELDS
                if k in then and then[k] != now.get(k)]
        if diff:  # another optimiser's state could load and silently continue as a different run
            raise CheckpointError(f"`resume`: {path} was trained with other optimiser options ({', '.join(diff)}); "
                                  "resume with the options it was trained with, or start a new run in another `out`")
        try:
            self.optimizer.load_state_dict(extra["optimizer"])
            self.scheduler.load_state_dict(extra["scheduler"])
        except (ValueError, KeyError) as e:
            groups = len(extra["optimizer"].get("param_groups", [])) if isinstance(extra["optimizer"], dict) else 0
            raise CheckpointError(f"`resume`: {path}'s optimiser state does not fit this run's optimiser ({groups} "
                                  f"parameter group(s) there, {len(self.optimizer.param_groups)} here: written by "
                                  "another kdcache version); start a new run in another `out`") from e
        if "scaler" in extra and self.scaler.is_enabled():
            self.scaler.load_state_dict(extra["scaler"])
        self.start_epoch = int(extra["epoch"]) + 1
        self.best_score = extra.get("best_score")
        self.best_top1 = extra.get("best_top1")
        self.log(f"resumed from {path} at epoch {self.start_epoch}")

    def end_epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float] | None) -> None:
        if not self.ctx.is_main:
            return
        row = {"epoch": epoch, **{f"train/{k}": v for k, v in train_stats.items()}}
        if val_stats:
            row.update({f"val/{k}": v for k, v in val_stats.items()})
        try:
            self.metrics.write(row, step=epoch)
        except OSError as e:
            raise write_failed(self.metrics.path, e) from e
        top1 = "ema_top1" if self.cfg.ema_select else "top1"  # the checkpoints' model's score
        # without a validation split nothing is selected: best.pt is the last epoch
        score = val_stats[top1] if val_stats else float(epoch)
        is_best = self.best_score is None or score > self.best_score
        if is_best:
            self.best_score = score
            self.best_top1 = val_stats[top1] if val_stats else None
        state = dict(self.meta, epoch=epoch, best_score=self.best_score, best_top1=self.best_top1, metrics=row,
                     optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.with_head is not None:  # for resume; the exported student is the model alone
            state["feature_head"] = {k: v.detach().cpu() for k, v in self.with_head.head.state_dict().items()}
        saved = self.model
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            if self.cfg.ema_select:  # evaluate, export and dump-teacher load the EMA
                saved = self.ema.module
                del state["ema"]["state_dict"]  # it is the checkpoint's model
                state["raw_state_dict"] = self.model.state_dict()
        for name in ("last.pt", "best.pt") if is_best else ("last.pt",):
            path = os.path.join(self.cfg.out, name)
            try:
                save_checkpoint(path, saved, **state)
            except (OSError, RuntimeError) as e:  # torch reports a short write as a RuntimeError
                raise write_failed(path, e) from e
        val = f" val top1 {val_stats['top1']:.2f} top5 {val_stats['top5']:.2f}" if val_stats else ""
        if val_stats and "ema_top1" in val_stats:
            val += f" (EMA {val_stats['ema_top1']:.2f})"
        self.log(f"epoch {epoch + 1}/{self.cfg.epochs}: loss {train_stats['loss']:.4f}{val}")

    def close(self) -> dict[str, Any]:
        self.metrics.close()
        return {"out": self.cfg.out, "best_top1": self.best_top1, "rank": self.ctx.rank, "test": self.test_stats,
                "best": os.path.join(self.cfg.out, "best.pt"), "last": os.path.join(self.cfg.out, "last.pt")}


def _compiled(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(model)``, or a one-line error where this Python / torch cannot compile."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError("`compile`: torch.compile is not supported on this Python/torch build; run without it")
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"`compile_backend` {backend!r} is not one of torch.compile's backends "
                          f"({', '.join(torch._dynamo.list_backends())})")
    return torch.compile(model, backend=backend)


@contextmanager
def _compile_errors(enabled: bool) -> Iterator[None]:
    """torch.compile fails lazily, at the first forward: turn its errors into one line."""
    try:
        yield
    except KdcacheError:
        raise
    except Exception as e:
        if not enabled or not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"`compile`: torch.compile cannot compile this student here ({first}); "
                          "run without `compile`") from e
