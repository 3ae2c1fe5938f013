"""Evaluating a checkpoint (on its run's data and test split by default) or any model from any weights file."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache import _teacher
from kdcache._orphans import exit_with_parent
from kdcache._runtime import select_device
from kdcache._teacher import TeacherSpec
from kdcache._views import EvalViews, identity_collate, resolve_view_spec
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.data import DataConfig
from kdcache.errors import CheckpointError, ConfigError
from kdcache.models import model_cfg
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train._heldout import checkpoint_data
from kdcache.train._knn import knn_accuracy
from kdcache.train._loop import evaluate

__all__ = ["evaluate_checkpoint", "evaluate_model"]


def evaluate_checkpoint(path: str, data: DataConfig | dict[str, Any] | None = None, *, batch_size: int = 256,
                        workers: int = 2, device: str = "auto", ema: bool = False, knn: int = 0) -> dict[str, Any]:
    """Top-1/top-5 of a kdcache checkpoint with its own eval views, on ``data``: a DataConfig, or options over
    the data its run recorded (None: all of them, on the run's test split; see ``checkpoint_data``). Data
    whose class names differ from the run's is refused. ``ema``: the model EMA it carries (a run with
    ``ema_decay``; with ``ema_select`` it is the checkpoint's model). ``knn`` k > 0 adds the k-NN top-1 of its
    pooled embeddings with the data's ``train`` split as the memory bank (``kdcache.train._knn``)."""
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
    stats: dict[str, Any] = evaluate_views(model, spec, ds, batch_size=batch_size, workers=workers, device=device)
    if knn:
        stats.update(_knn(model, spec, data, ds, knn, batch_size=batch_size, workers=workers, device=device))
    return {**stats, "data": data.source, "split": data.split}


def _knn(model: nn.Module, spec: ViewSpec, data: DataConfig, ds, k: int, **kw) -> dict[str, Any]:
    """k-NN top-1 of ``ds`` (the split ``data`` names) against the same data's ``train`` split."""
    from dataclasses import replace

    bank_cfg = replace(data, split="train")
    same = bank_cfg == data
    bank = ds if same else bank_cfg.open().preload()
    return {**knn_accuracy(model, spec, bank, ds, k=k, same=same, **kw), "knn_bank_split": "train"}


def _names(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")


def evaluate_model(model: TeacherSpec, data: DataConfig, *, view: dict[str, Any] | None = None,
                   batch_size: int = 256, workers: int = 2, device: str = "auto", knn: int = 0) -> dict[str, Any]:
    """Top-1/top-5 of any model by name with weights from any supported file (a bare or foreign state
    dict, a training checkpoint, a kdcache checkpoint), on the model's default eval view (its input size,
    normalisation, interpolation and eval crop) with ``view`` overrides. ``model.weights=None`` evaluates the
    model as initialised (seeded), e.g. as a chance-level reference. ``knn``: as for :func:`evaluate_checkpoint`."""
    if not model.name:
        raise ConfigError("name the model to evaluate")
    ds = data.open().preload()
    torch.manual_seed(0)
    loaded = _teacher.build_teacher(model, num_classes=ds.num_classes)
    spec = resolve_view_spec(loaded.cfg, view or {})
    stats: dict[str, Any] = evaluate_views(loaded.model, spec, ds, batch_size=batch_size, workers=workers,
                                            device=device)
    if knn:
        stats.update(_knn(loaded.model, spec, data, ds, knn, batch_size=batch_size, workers=workers, device=device))
    stats.update(model=loaded.cfg.name, weights=model.weights, weights_sha256=loaded.weights_sha256,
                 view_size=spec.size, data=data.source, split=data.split)
    return stats


def evaluate_views(model: nn.Module, spec: ViewSpec, ds, *, batch_size: int, workers: int,
                    device: str) -> dict[str, float]:
    dev = select_device(device)
    model.to(dev)
    loader = DataLoader(EvalViews(ds, ViewPipeline(spec)), batch_size=batch_size, num_workers=workers,
                        collate_fn=identity_collate, worker_init_fn=exit_with_parent())
    t0 = time.perf_counter()
    stats = evaluate(model, loader, device=dev)
    stats["seconds"] = time.perf_counter() - t0
    return stats
