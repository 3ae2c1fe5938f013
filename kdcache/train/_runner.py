"""Training runs: a student from a cache (or an online teacher), a teacher from labels.

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

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from kdcache import _teacher
from kdcache._runtime import DistContext
from kdcache._teacher_input import cache_teacher, teacher_on_views
from kdcache._views import resolve_view_spec
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.augment._match import view_conflicts
from kdcache.cache import CacheStore
from kdcache.cache._teachers import MAIN, open_teacher, open_teachers
from kdcache.errors import ConfigError
from kdcache.models import model_cfg
from kdcache.train._epochs import cached_epochs, fresh_view_epochs
from kdcache.train._heldout import eval_loader, resolve_heldout
from kdcache.train._run import Run
from kdcache.train._rundir import run_directory
from kdcache.train._targets import OnlineTargets, TeacherTargets
from kdcache.train._trainconfig import TrainConfig

__all__ = ["train_student", "train_teacher"]


def _resolve_heldout(cfg: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """``cfg`` with its validation and test splits resolved (recorded in config.json as used)."""
    val, test = resolve_heldout(cfg.data, cfg.val_split, cfg.test_split, log)
    return replace(cfg, val_split=val, test_split=test)


def _heldout_loaders(cfg: TrainConfig, pipeline: ViewPipeline, pin: bool):
    """The validation and test loaders (a `limit` applies to each split, as to the training split)."""
    return tuple(eval_loader(cfg.data, split, pipeline, batch_size=cfg.batch_size, workers=cfg.workers, pin=pin)
                 for split in (cfg.val_split, cfg.test_split))


def train_student(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Distil ``cfg.model`` from the cache ``cfg.cache`` (``loss.distill="none"``: labels only), or,
    with ``cfg.teacher``, from that teacher run online on fresh views at every step."""
    online = cfg.teacher is not None or cfg.online_cache_teachers
    if not cfg.cache and not online:
        raise ConfigError("a student run needs `cache` (a teacher cache) or `teacher` (an online teacher)")
    if online and cfg.loss.distill == "none" and not cfg.loss.features:
        raise ConfigError("`teacher` (an online teacher) is only used for distillation; choose soft or hard "
                          "distillation, or drop it to train from labels")
    if online and cfg.repeated_views > 1:
        raise ConfigError("`repeated_views` replays several cached views of an image at no teacher cost; an online "
                          "teacher draws fresh views instead: use it with `cache` only")
    if online and cfg.views_per_image > 1:
        raise ConfigError("`views_per_image` replays several cached views per decode; an online teacher draws "
                          "fresh views instead: use it with `cache` only")
    if cfg.teacher is not None and (tuple(cfg.loss.teachers) != (MAIN,) or cfg.loss.feature_teacher != MAIN):
        raise ConfigError("`teachers` and `feature_teacher` name a cache's teachers; an online teacher is one "
                          "model: drop them, or train from the cache")
    ctx = DistContext.from_env(cfg.device)
    try:
        with run_directory(cfg, ctx, log):
            store = CacheStore.open(cfg.cache, mode="r", storage_options=cfg.storage_options) if cfg.cache else None
            ds = cfg.data.open().preload()  # resident before forking workers: one shared copy
            meta: dict[str, Any] = {"class_names": list(ds.class_names)}
            if store is not None:
                if cfg.teacher is None:
                    _check_teachers(cfg, store)
                _check_asked_views(cfg, store)
                store.check_dataset(ds)
                meta["cache_fingerprint"] = store.identity.fingerprint
                if cfg.teacher is None:  # which of the cache's teachers the run learns from, each by its fingerprint
                    meta["teachers"] = _teacher_fingerprints(cfg, store)
            teacher = None
            if cfg.teacher is not None:
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
            feature_dim = None
            if cfg.loss.features:  # the teacher's embedding length: the cache's, or the online teacher's
                feature_dim = (open_teacher(store, cfg.loss.feature_teacher).layout.embedding_dim
                               if cfg.teacher is None else
                               _teacher.embedding_dim(teacher.model, spec.size, logits=cfg.loss.distill != "none"))
                meta["feature_dim"] = feature_dim
            run = Run(recorded, ctx, num_classes=ds.num_classes, num_samples=len(ds), kind="student",
                       log=log if ctx.is_main else _quiet, extra_meta=meta, feature_dim=feature_dim,
                       view_size=spec.size)
            pin = run.device.type == "cuda"
            if cfg.online_cache_teachers:  # the cache's teachers, built from what it records, on fresh views
                targets = online_cache_targets(store, cfg, spec, ds.num_classes, run.device, run.precision, run.log)
                epoch_data = fresh_view_epochs(ds, pipeline, targets, cfg, ctx, pin)
            elif online:
                targets = OnlineTargets(teacher.model.to(run.device), amp=cfg.amp, precision=run.precision,
                                        logits=cfg.loss.distill != "none", embedding=cfg.loss.features)
                epoch_data = fresh_view_epochs(ds, pipeline, targets, cfg, ctx, pin)
            else:
                epoch_data = cached_epochs(store, ds, pipeline, cfg, ctx, pin, run.log)
            val, test = _heldout_loaders(cfg, pipeline, pin) if ctx.is_main else (None, None)
            return run.fit(epoch_data, np.asarray(ds.labels, dtype=np.int64), val, progress, test)
    finally:
        ctx.close()


def _check_teachers(cfg: TrainConfig, store: CacheStore) -> None:
    """The teachers asked for exist in the cache and hold what the losses read (one line each otherwise)."""
    loss = cfg.loss
    if loss.distill != "none":
        for name, t in open_teachers(store, list(loss.teachers)).items():
            if not t.target_mode.has_logits:
                raise ConfigError(f"teacher {name!r} of {cfg.cache} holds embeddings only (targets "
                                  f"{t.target_mode}): `distill` {loss.distill} learns from logits; leave it out of "
                                  "`teachers`, train from labels only, or use it for feature distillation")
    if loss.features:
        t = open_teacher(store, loss.feature_teacher)
        if not t.target_mode.embedding:
            raise ConfigError(f"teacher {loss.feature_teacher!r} of {cfg.cache} holds no embeddings (targets "
                              f"{t.target_mode}): `feature_weight` needs a teacher dumped or added with `embed` "
                              "pooled")


def online_cache_targets(store: CacheStore, cfg: TrainConfig, spec: ViewSpec, num_classes: int, device, precision,
                         log: Callable[[str], None]) -> TeacherTargets:
    """The cache's teachers the loss names, each built as its cache (or group) records it and taking the cache's
    views as an added teacher does (``kdcache._teacher_input``), run on every batch's fresh views."""
    loss = cfg.loss
    logit = list(loss.teachers) if loss.distill != "none" else []
    names = logit + ([loss.feature_teacher] if loss.features and loss.feature_teacher not in logit else [])
    sources = {}
    for n in names:
        t = open_teacher(store, n)
        loaded = _teacher.build_teacher(cache_teacher(t), num_classes=num_classes)
        if loaded.identity() != t.identity.teacher:
            raise ConfigError(f"teacher {n!r} of {cfg.cache}: its recorded weights now give another teacher "
                              "(weights sha256 differ); restore them")
        model = loaded.model if n == MAIN else teacher_on_views(
            loaded, spec, logits=n in logit, embedding=loss.features and n == loss.feature_teacher, log=log)
        sources[n] = OnlineTargets(model.to(device), amp=cfg.amp, precision=precision, logits=n in logit,
                                   embedding=loss.features and n == loss.feature_teacher)
    return TeacherTargets(sources, logit, loss.ensemble_weights, loss.feature_teacher if loss.features else None,
                          num_classes=num_classes, temperature=loss.temperature, fill=loss.topk_fill)


def _teacher_fingerprints(cfg: TrainConfig, store: CacheStore) -> dict[str, str]:
    loss = cfg.loss
    logit = list(loss.teachers) if loss.distill != "none" else []
    names = logit + ([loss.feature_teacher] if loss.features and loss.feature_teacher not in logit else [])
    return {n: open_teacher(store, n).identity.fingerprint for n in names}


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


def train_teacher(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train or fine-tune a teacher on labels with fresh views every epoch; writes best/last checkpoints."""
    if cfg.views_per_image != 1:
        raise ConfigError("`views_per_image` replays cached views; a teacher run draws a fresh view per epoch")
    ctx = DistContext.from_env(cfg.device)
    try:
        with run_directory(cfg, ctx, log):
            ds = cfg.data.open().preload()  # resident before forking workers: one shared copy
            cfg = _resolve_heldout(replace(cfg, loss=replace(cfg.loss, distill="none")), log if ctx.is_main else _quiet)
            run = Run(cfg, ctx, num_classes=ds.num_classes, num_samples=len(ds), kind="teacher",
                       log=log if ctx.is_main else _quiet, extra_meta={"class_names": list(ds.class_names)})
            spec = resolve_view_spec(model_cfg(run.model), cfg.view, log=run.log, images=ds)  # says what it used
            run.meta["view_spec"] = spec.to_dict()  # travels in every checkpoint: evaluate uses these views
            pipeline = ViewPipeline(spec)
            pin = run.device.type == "cuda"
            epoch_data = fresh_view_epochs(ds, pipeline, None, cfg, ctx, pin)
            val, test = _heldout_loaders(cfg, pipeline, pin) if ctx.is_main else (None, None)
            return run.fit(epoch_data, np.asarray(ds.labels, dtype=np.int64), val, progress, test)
    finally:
        ctx.close()


def _quiet(_msg: str) -> None:
    pass
