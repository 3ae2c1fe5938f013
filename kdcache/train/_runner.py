"""Training runs: a student from a cache (or an online teacher), a teacher from labels, evaluation.

All runs share one loop (``kdcache.train._loop``); they differ only in where views and teacher
targets come from:

* a teacher draws a fresh view per (sample, epoch) from the (seed, key, epoch) generator;
* a cached student replays, each epoch, one cached view per sample from its recorded parameters
  and takes the teacher's targets for that exact view from the cache. It never builds the teacher;
* the online reference student (``TrainConfig.teacher``) draws fresh views as a teacher run does,
  from the same view spec (the cache's, or the teacher's input plus overrides), and runs the
  teacher on them at every step: same loop, loss, optimiser, schedule and batches as cached
  training, only the targets' source differs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache import _teacher
from kdcache._config import ConfigBase
from kdcache._orphans import exit_with_parent
from kdcache._runtime import PRECISIONS, DistContext, resolve_precision, select_device
from kdcache._teacher import TeacherSpec
from kdcache._utils import check_model_kwargs, recordable_config
from kdcache._views import EvalViews, FlatBatches, ReplayViews, ViewDraws, identity_collate, resolve_view_spec
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.augment._match import view_conflicts
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.errors import CacheMismatchError, CheckpointError, ConfigError, KdcacheError
from kdcache.models import create_model, model_cfg
from kdcache.models._checkpoint import load_checkpoint, load_weights, save_checkpoint
from kdcache.train._ema import ModelEma
from kdcache.train._heldout import TEST_FILE, checkpoint_data, eval_loader, resolve_heldout, write_test
from kdcache.train._logging import MetricsLogger
from kdcache.train._loop import evaluate, train_one_epoch
from kdcache.train._losses import DistillationLoss, LossConfig
from kdcache.train._optim import DECAY_RULES, SCHEDULES, build_optimizer, build_scheduler, scaled_lr
from kdcache.train._schedule import epoch_views
from kdcache.train._stream import (
    StreamedTargets,
    plan_epoch,
    store_window,
    truncate_plan,
    window_class_coverage,
)
from kdcache.train._targets import OnlineTargets, TargetSource

__all__ = ["TrainConfig", "train_student", "train_teacher", "evaluate_checkpoint", "evaluate_model", "build_scheduler"]


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    data: DataConfig
    out: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None            # students: the teacher cache; teachers: None
    teacher: TeacherSpec | None = None  # students: an online teacher run at every step (the reference)
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
        if self.resume and self.overwrite:
            raise ConfigError("`resume` and `overwrite` exclude each other: continue the run in `out` or replace it")


# What a run writes into its directory; a directory holding any of them holds a run.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json", TEST_FILE)
RUN_DIRS = ("tb",)


CHECKPOINTS = ("last.pt", "best.pt")


def _early_leftovers(out: str) -> list[str]:
    """What a run killed before its first checkpoint leaves (config.json, metrics, tb/): nothing to resume
    from, nothing worth keeping. Empty when the directory holds a checkpoint or no run."""
    if any(os.path.exists(os.path.join(out, f)) for f in CHECKPOINTS):
        return []
    return [f for f in (*RUN_FILES, *RUN_DIRS) if os.path.exists(os.path.join(out, f))]


def _remove_leftovers(out: str) -> None:
    for f in RUN_FILES:
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    for d in RUN_DIRS:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)


def _prepare_run_dir(cfg: TrainConfig, log: Callable[[str], None] = print) -> bool:
    """Check and create ``cfg.out``; True when this run created it (so a failed start removes it again).

    A directory that already holds a run is refused unless the run continues it (``resume``) or
    replaces it (``overwrite``, which deletes the old run's files first): never overwritten silently.
    """
    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"run directory {out} is a file; choose another `out`")
    early = _early_leftovers(out) if os.path.isdir(out) else []
    if early and not cfg.resume:  # --resume says the same and starts over too (see _Run._resume)
        log(f"{out} holds a run stopped before its first checkpoint ({', '.join(early)}): starting it from the "
            "beginning")
        _remove_leftovers(out)
    held = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if held and not cfg.resume:
        if not cfg.overwrite:
            raise ConfigError(f"{out} already holds a run ({', '.join(held)}); continue it with `resume`, "
                              "replace it with `overwrite`, or choose another `out`")
        for f in held:
            os.remove(os.path.join(out, f))
        for d in RUN_DIRS:
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    created = not os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run directory {out}: {e.strerror or e}") from e
    return created


@contextmanager
def _run_directory(cfg: TrainConfig, ctx: DistContext, log: Callable[[str], None] = print) -> Iterator[None]:
    """The run directory for the run's lifetime: a run that fails before its first checkpoint leaves
    nothing behind (when it made the directory); one that fails later keeps its checkpoints and says so."""
    created = _prepare_run_dir(cfg, log) if ctx.is_main else False
    try:
        yield
    except BaseException as e:
        if not ctx.is_main:
            raise
        last = os.path.join(cfg.out, "last.pt")
        if not os.path.exists(last):
            if created:
                shutil.rmtree(cfg.out, ignore_errors=True)
            elif not cfg.resume:  # a directory that held no run: remove only what this run wrote
                for f in RUN_FILES:
                    if os.path.exists(os.path.join(cfg.out, f)):
                        os.remove(os.path.join(cfg.out, f))
                for d in RUN_DIRS:
                    shutil.rmtree(os.path.join(cfg.out, d), ignore_errors=True)
            raise
        if isinstance(e, KdcacheError):
            raise type(e)(f"{e}; {last} is kept: rerun with `resume` to continue from it") from e
        raise


def _write_failed(path: str, e: BaseException) -> CheckpointError:
    # torch reports a short write as RuntimeError("[enforce fail at inline_container.cc] unexpected pos ...")
    reason = getattr(e, "strerror", None) or ("the file could not be written in full" if isinstance(e, RuntimeError)
                                              else str(e).strip() or type(e).__name__)
    return CheckpointError(f"cannot write {path} ({reason}); is the disk full or the directory read-only?")


def _shard_batches(n: int, *, epoch: int, seed: int, batch_size: int, ctx: DistContext) -> list[list[int]]:
    """This rank's shuffled batches of sample indices (equal count on every rank)."""
    perm = np.random.default_rng([int(seed), int(epoch), 0x7472]).permutation(n)
    per_rank = -(-n // ctx.world_size)
    perm = np.resize(perm, per_rank * ctx.world_size)  # pad by wrapping so ranks stay in step
    mine = perm[ctx.rank::ctx.world_size].tolist()
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


_OPTIMIZER_FIELDS = ("optimizer", "weight_decay", "momentum", "nesterov", "decay_rule", "sched")  # checked on resume


class _Run:
    """State shared by teacher and student runs: model, optimiser, logging, checkpoints."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, *, num_classes: int, num_samples: int,
                 kind: str, log: Callable[[str], None], extra_meta: dict[str, Any]):
        self.cfg, self.ctx, self.kind, self.log = cfg, ctx, kind, log
        self.device = select_device(cfg.device, local_rank=ctx.local_rank)
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)
        if cfg.init_weights:
            load_weights(self.model, cfg.init_weights)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = _compiled(self.model, cfg.compile_backend) if cfg.compile else self.model
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        global_batch = cfg.batch_size * cfg.accum_steps * ctx.world_size
        self.lr = scaled_lr(cfg.lr, global_batch, cfg.scale_lr)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, lr=self.lr, weight_decay=cfg.weight_decay,
                                         momentum=cfg.momentum, nesterov=cfg.nesterov, decay_rule=cfg.decay_rule)
        n_batches = len(_shard_batches(num_samples, epoch=0, seed=cfg.seed, batch_size=cfg.batch_size, ctx=ctx))
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
                raise _write_failed(path, e) from e
        # With M views per decoded image, one pass over the data trains M epochs' worth of samples
        # (epochs count samples, not decodes): ``epoch_data(epoch)`` then covers epochs epoch..epoch+M-1.
        m = cfg.views_per_image
        if self.start_epoch % m:
            raise CheckpointError(f"`resume`: the checkpoint ends after epoch {self.start_epoch}, inside a pass "
                                  f"of `views_per_image` {m}; resume with the run's own setting")
        for epoch in range(self.start_epoch, cfg.epochs, m):
            t0 = time.perf_counter()
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
        path = os.path.join(self.cfg.out, "best.pt")
        model, extra = load_checkpoint(path)
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
            write_test(self.cfg.out, record)
        except OSError as e:
            raise _write_failed(path, e) from e
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
            early = _early_leftovers(self.cfg.out)
            if not early:
                raise CheckpointError(f"`resume`: {self.cfg.out} holds no run to resume (no {path}); drop `resume` "
                                      "to start one")
            self.log(f"{self.cfg.out} holds a run stopped before its first checkpoint ({', '.join(early)}): "
                     "starting it from the beginning")
            self.ctx.barrier()  # every rank has looked before the leftovers go
            if self.ctx.is_main:
                _remove_leftovers(self.cfg.out)
            return
        model, extra = load_checkpoint(path)
        if model_cfg(model).name != model_cfg(self.model).name:
            raise CheckpointError(f"`resume`: {path} holds {model_cfg(model).name!r}, not {self.cfg.model!r}")
        if extra.get("cache_fingerprint") != self.meta.get("cache_fingerprint"):
            raise CacheMismatchError(f"`resume`: {path} was trained from another cache")
        if extra.get("online_teacher") != self.meta.get("online_teacher"):
            raise CheckpointError(f"`resume`: {path} was trained with another `teacher` (online)")
        # With `ema_select` the checkpoint's model is the EMA and the trained weights travel beside it.
        self.model.load_state_dict(extra.get("raw_state_dict") or model.state_dict())
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
            raise _write_failed(self.metrics.path, e) from e
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
                raise _write_failed(path, e) from e
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


def _resolve_heldout(cfg: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """``cfg`` with its validation and test splits resolved (recorded in config.json as used)."""
    val, test = resolve_heldout(cfg.data, cfg.val_split, cfg.test_split, log)
    return replace(cfg, val_split=val, test_split=test)


def _heldout_loaders(cfg: TrainConfig, pipeline: ViewPipeline, pin: bool):
    """The validation and test loaders (a `limit` applies to each split, as to the training split)."""
    return tuple(eval_loader(cfg.data, split, pipeline, batch_size=cfg.batch_size, workers=cfg.workers, pin=pin)
                 for split in (cfg.val_split, cfg.test_split))


def _loader(dataset, batches: list, cfg: TrainConfig, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, collate_fn=identity_collate,
                      pin_memory=pin, worker_init_fn=exit_with_parent())  # no orphans when the run is killed


def train_student(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Distil ``cfg.model`` from the cache ``cfg.cache`` (``loss.distill="none"``: labels only), or,
    with ``cfg.teacher``, from that teacher run online on fresh views at every step."""
    online = cfg.teacher is not None
    if not cfg.cache and not online:
        raise ConfigError("a student run needs `cache` (a teacher cache) or `teacher` (an online teacher)")
    if online and cfg.loss.distill == "none":
        raise ConfigError("`teacher` (an online teacher) is only used for distillation; choose soft or hard "
                          "distillation, or drop it to train from labels")
    if online and cfg.repeated_views > 1:
        raise ConfigError("`repeated_views` replays several cached views of an image at no teacher cost; an online "
                          "teacher draws fresh views instead: use it with `cache` only")
    if online and cfg.views_per_image > 1:
        raise ConfigError("`views_per_image` replays several cached views per decode; an online teacher draws "
                          "fresh views instead: use it with `cache` only")
    ctx = DistContext.from_env(cfg.device)
    try:
        with _run_directory(cfg, ctx, log):
            store = CacheStore.open(cfg.cache, mode="r", storage_options=cfg.storage_options) if cfg.cache else None
            ds = cfg.data.open().preload()  # resident before forking workers: one shared copy
            meta: dict[str, Any] = {"class_names": list(ds.class_names)}
            if store is not None:
                _check_asked_views(cfg, store)
                store.check_dataset(ds)
                meta["cache_fingerprint"] = store.identity.fingerprint
            teacher = None
            if online:
                # Looked up on the module so a test can prove that a cached run never calls it.
                teacher = _teacher.build_teacher(cfg.teacher, num_classes=ds.num_classes)
                meta["online_teacher"] = teacher.describe()
                if store is not None and teacher.identity() != store.identity.teacher:
                    log(f"note: the online teacher {teacher.cfg.name!r} is not the teacher of {cfg.cache}; "
                        "its views (view spec) are used all the same")
            spec = (ViewSpec.from_dict(store.identity.view_spec) if store is not None
                    else resolve_view_spec(teacher.cfg, cfg.view))
            meta["view_spec"] = spec.to_dict()
            pipeline = ViewPipeline(spec)
            cfg = _resolve_heldout(cfg, log if ctx.is_main else _quiet)
            # config.json records the views used: a cached run's are the cache's, whatever options were given
            recorded = replace(cfg, view=_cache_views(store)) if store is not None else cfg
            run = _Run(recorded, ctx, num_classes=ds.num_classes, num_samples=len(ds), kind="student",
                       log=log if ctx.is_main else _quiet, extra_meta=meta)
            pin = run.device.type == "cuda"
            if online:
                targets = OnlineTargets(teacher.model.to(run.device), amp=cfg.amp, precision=run.precision)
                epoch_data = _fresh_view_epochs(ds, pipeline, targets, cfg, ctx, pin)
            else:
                epoch_data = _cached_epochs(store, ds, pipeline, cfg, ctx, pin, run.log)
            val, test = _heldout_loaders(cfg, pipeline, pin) if ctx.is_main else (None, None)
            return run.fit(epoch_data, np.asarray(ds.labels, dtype=np.int64), val, progress, test)
    finally:
        ctx.close()


def _check_asked_views(cfg: TrainConfig, store: CacheStore) -> None:
    """View options (or a preset) given with `cache` must describe the cache's own views: they cannot change
    them, so any that differ are refused by name (a preset states its defaults too: kdcache.augment._match)."""
    if not cfg.view:
        return
    differ = view_conflicts(cfg.view, ViewSpec.from_dict(store.identity.view_spec))
    if differ:
        raise ConfigError(f"view options conflict with `cache`: the views are the cache's ({cfg.cache}): "
                          f"{'; '.join(differ)}; drop them, or drop `cache` to draw views from the online "
                          "teacher's input")


def _cache_views(store: CacheStore) -> dict[str, Any]:
    """The views a cached run uses, as its recorded `view`: the cache's whole spec (and its preset's name)."""
    view = ViewSpec.from_dict(store.identity.view_spec).to_dict()
    preset = ((store.attrs.get("config") or {}).get("view") or {}).get("preset")
    return {**({"preset": preset} if preset else {}), **view}


# train-student warns from this many replays of each cached view (epochs / views) on
REPLAYS_WARN = 8


def _cached_epochs(store: CacheStore, ds, pipeline: ViewPipeline, cfg: TrainConfig, ctx: DistContext, pin: bool,
                   log: Callable[[str], None] | None = None):
    """Each epoch: one cached view per sample (``epoch_views``), replayed, with its cached targets.

    The epoch runs in windows of blocks (``kdcache.train._stream``): each rank reads the replay
    parameters of its own blocks only and streams their targets a window ahead, holding at most
    ``target_memory_mb`` of them; when the rank's targets fit, one window covers them all.
    """
    distill = cfg.loss.distill != "none"
    r = cfg.repeated_views
    m = cfg.views_per_image * r  # slots: views replayed from each decode
    log = log or _quiet
    warned = []

    def epoch_data(epoch: int):
        # Reopen each epoch: views another process added (and marked done) become eligible.
        store = CacheStore.open(cfg.cache, mode="r", storage_options=cfg.storage_options)
        done = store.done_units()
        # Epochs epoch..epoch+m-1 train on the views epoch_views picks for them, whatever m is; with repeated
        # views epoch e trains on the R views epoch_views picks for e*R .. e*R+R-1 (distinct within a cycle).
        first = epoch * r if r > 1 else epoch
        views = [epoch_views(done, epoch=first + j, seed=cfg.seed) for j in range(m)]
        layout = store.layout
        # only streamed targets need windows: a labels-only run shuffles its whole share
        window = store_window(store, cfg.target_memory_mb, m) if distill else store.num_blocks
        plan = plan_epoch(len(ds), store.block_size, epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size,
                          window=window, rank=ctx.rank, world_size=ctx.world_size)
        if r > 1:  # the head of this rank's order: 1/R of its samples, each with R of its views in one batch
            plan = truncate_plan(plan, -(-sum(len(b) for b in plan.batches) // r), store.block_size,
                                 -(-cfg.batch_size // r))
        if not warned:
            warned.append(True)
            if r > store.num_views:
                log(f"warning: --repeated-views {r} over {store.num_views} cached view(s): an image repeats views "
                    "within an epoch; grow the cache with `kdcache dump-teacher --add-views N`")
            replays = cfg.epochs / max(1, store.num_views)
            if replays >= REPLAYS_WARN:
                log(f"warning: {cfg.epochs} epochs over {store.num_views} cached view(s) replay each view about "
                    f"{replays:.0f} times; in the CIFAR-10 accuracy table 10 replays a view gained nothing over "
                    "labels-only training and 20 lost 5.7 points (docs/benchmarks.md): grow the cache with "
                    "`kdcache dump-teacher --add-views N`")
            share, mixed = window_class_coverage(plan, np.asarray(ds.labels), seed=cfg.seed)
            if share < 0.5 * mixed:
                need = -(-2 * store.block_size * store.layout.target_bytes_per_view * m * store.num_blocks >> 20)
                log(f"warning: a target window holds {share:.0%} of the classes on average ({mixed:.0%} if the "
                    f"data were not ordered by class): batches mix few classes at a time. --target-memory-mb "
                    f"{cfg.target_memory_mb} fits {window} of {store.num_blocks} blocks per window; {need} holds "
                    "the epoch at once, or train from a top-k cache")
        replay = [store.read_views(v, names=layout.replay_names, blocks=plan.blocks) for v in views]
        targets = StreamedTargets(store, views, layout.target_names, plan) if distill else None
        if m == 1:
            return _loader(ReplayViews(ds, pipeline, replay[0]), plan.batches, cfg, pin), targets
        # Each worker item: one decode of a batch's images and m views of each
        if r > 1:  # repeated views: the R views in one batch, trained in the same step (as DeiT's RASampler does)
            return _loader(ReplayViews(ds, pipeline, replay, merge=True), plan.batches, cfg, pin), targets
        # views per image: m batches, none holding two views of an image (FKD)
        return FlatBatches(_loader(ReplayViews(ds, pipeline, replay), plan.batches, cfg, pin), m), targets

    return epoch_data


def _fresh_view_epochs(ds, pipeline: ViewPipeline, targets: OnlineTargets | None, cfg: TrainConfig,
                       ctx: DistContext, pin: bool):
    """Each epoch: a fresh view per sample from the (seed, key, epoch) generator (teachers; online students,
    whose ``targets`` run the teacher on it)."""
    draws = ViewDraws(ds, pipeline, cfg.seed)

    def epoch_data(epoch: int):
        # The epoch number is the view index: fresh views every epoch, reproducible from the seed.
        batches = [[(i, epoch) for i in b] for b in
                   _shard_batches(len(ds), epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size, ctx=ctx)]
        return _loader(draws, batches, cfg, pin), targets

    return epoch_data


def train_teacher(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train or fine-tune a teacher on labels with fresh views every epoch; writes best/last checkpoints."""
    if cfg.views_per_image != 1:
        raise ConfigError("`views_per_image` replays cached views; a teacher run draws a fresh view per epoch")
    ctx = DistContext.from_env(cfg.device)
    try:
        with _run_directory(cfg, ctx, log):
            ds = cfg.data.open().preload()  # resident before forking workers: one shared copy
            cfg = _resolve_heldout(replace(cfg, loss=replace(cfg.loss, distill="none")), log if ctx.is_main else _quiet)
            run = _Run(cfg, ctx, num_classes=ds.num_classes, num_samples=len(ds), kind="teacher",
                       log=log if ctx.is_main else _quiet, extra_meta={"class_names": list(ds.class_names)})
            spec = resolve_view_spec(model_cfg(run.model), cfg.view, log=run.log, images=ds)  # says what it used
            run.meta["view_spec"] = spec.to_dict()  # travels in every checkpoint: evaluate uses these views
            pipeline = ViewPipeline(spec)
            pin = run.device.type == "cuda"
            epoch_data = _fresh_view_epochs(ds, pipeline, None, cfg, ctx, pin)
            val, test = _heldout_loaders(cfg, pipeline, pin) if ctx.is_main else (None, None)
            return run.fit(epoch_data, np.asarray(ds.labels, dtype=np.int64), val, progress, test)
    finally:
        ctx.close()


def evaluate_checkpoint(path: str, data: DataConfig | dict[str, Any] | None = None, *, batch_size: int = 256,
                        workers: int = 2, device: str = "auto", ema: bool = False) -> dict[str, Any]:
    """Top-1/top-5 of a kdcache checkpoint with its own eval views, on ``data``: a DataConfig, or options over
    the data its run recorded (None: all of them, on the run's test split; see ``checkpoint_data``). Data
    whose class names differ from the run's is refused. ``ema``: the model EMA it carries (a run with
    ``ema_decay``; with ``ema_select`` it is the checkpoint's model)."""
    model, extra = load_checkpoint(path)
    data = checkpoint_data(path, extra.get("config"), data)
    if ema:
        if "ema" not in extra:
            raise CheckpointError(f"{path} carries no model EMA (train with `ema_decay`)")
        if "state_dict" in extra["ema"]:  # else the checkpoint's model is the EMA (`ema_select`)
            model.load_state_dict(extra["ema"]["state_dict"])
    if "view_spec" in extra:
        spec = ViewSpec.from_dict(extra["view_spec"])
    else:
        spec = resolve_view_spec(model_cfg(model), {})
    ds = data.open().preload()
    n_cls = int(model_cfg(model).kwargs.get("num_classes", ds.num_classes))
    if n_cls != ds.num_classes:
        raise ConfigError(f"{path} predicts {n_cls} classes but {data.source} has {ds.num_classes}")
    names = extra.get("class_names")
    if names is not None and list(names) != list(ds.class_names):
        raise ConfigError(f"{path} was trained on the classes {_names(names)}, but {data.source} [{data.split}] has "
                          f"{_names(ds.class_names)}: evaluate on the data it was trained for")
    stats: dict[str, Any] = _evaluate_views(model, spec, ds, batch_size=batch_size, workers=workers, device=device)
    return {**stats, "data": data.source, "split": data.split}


def _names(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")


def evaluate_model(model: TeacherSpec, data: DataConfig, *, view: dict[str, Any] | None = None,
                   batch_size: int = 256, workers: int = 2, device: str = "auto") -> dict[str, Any]:
    """Top-1/top-5 of any model by name with weights from any supported file (a bare or foreign state
    dict, a training checkpoint, a kdcache checkpoint), on the model's default eval view (its input size,
    normalisation, interpolation and eval crop) with ``view`` overrides. ``model.weights=None`` evaluates the
    model as initialised (seeded), e.g. as a chance-level reference."""
    if not model.name:
        raise ConfigError("name the model to evaluate")
    ds = data.open().preload()
    torch.manual_seed(0)
    loaded = _teacher.build_teacher(model, num_classes=ds.num_classes)
    spec = resolve_view_spec(loaded.cfg, view or {})
    stats: dict[str, Any] = _evaluate_views(loaded.model, spec, ds, batch_size=batch_size, workers=workers,
                                            device=device)
    stats.update(model=loaded.cfg.name, weights=model.weights, weights_sha256=loaded.weights_sha256,
                 view_size=spec.size, data=data.source, split=data.split)
    return stats


def _evaluate_views(model: nn.Module, spec: ViewSpec, ds, *, batch_size: int, workers: int,
                    device: str) -> dict[str, float]:
    dev = select_device(device)
    model.to(dev)
    loader = DataLoader(EvalViews(ds, ViewPipeline(spec)), batch_size=batch_size, num_workers=workers,
                        collate_fn=identity_collate, worker_init_fn=exit_with_parent())
    t0 = time.perf_counter()
    stats = evaluate(model, loader, device=dev)
    stats["seconds"] = time.perf_counter() - t0
    return stats


def _quiet(_msg: str) -> None:
    pass
