"""kdcache: cache a vision teacher's outputs over replayable augmented views once, distil many students.

The public API is what this package exports (``kdcache.__all__``); everything else is internal.
Train from a cache in your own loop with :func:`open_cache`, :class:`CacheDataset` and
:class:`DistillationLoss` (README: "Use kdcache from your own training code"); make caches and
run students with :func:`dump_teacher` and :func:`train_student` (what the CLI calls).

Names are imported on first use, so ``import kdcache`` stays cheap (the CLI's fast paths and
``kdcache.errors`` do not pay for torchvision and zarr).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache._lazy import lazy_names
from kdcache.errors import (
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheNotFoundError,
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DownloadUnavailableError,
    KdcacheError,
    ModelError,
    TeacherOutputError,
)

if TYPE_CHECKING:
    from kdcache._cache_dataset import CacheDataset, open_cache
    from kdcache.augment import ViewParams, ViewPipeline, ViewSpec
    from kdcache.cache import CacheIdentity, CacheStore, TargetMode
    from kdcache.data import DataConfig, ImageDataset, open_dataset
    from kdcache.engine import (
        AddTeacherConfig,
        DumpConfig,
        DumpSummary,
        TeacherSpec,
        add_teacher,
        dump_teacher,
    )
    from kdcache.engine._verify import verify_cache
    from kdcache.models import create_model, list_models, load_checkpoint, register_model, save_checkpoint
    from kdcache.train import (
        DistillationLoss,
        Embedded,
        LossConfig,
        StudentWithFeatures,
        TrainConfig,
        ensemble_logits,
        epoch_views,
        evaluate,
        evaluate_checkpoint,
        evaluate_model,
        soft_labels,
        teacher_log_probs,
        train_student,
        train_teacher,
    )

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    # training from a cache in your own code
    "open_cache": "kdcache._cache_dataset",
    "CacheDataset": "kdcache._cache_dataset",
    "DistillationLoss": "kdcache.train",
    "LossConfig": "kdcache.train",
    "teacher_log_probs": "kdcache.train",
    "ensemble_logits": "kdcache.train",
    "soft_labels": "kdcache.train",
    "epoch_views": "kdcache.train",
    "StudentWithFeatures": "kdcache.train",
    "Embedded": "kdcache.train",
    # the cache
    "CacheStore": "kdcache.cache",
    "CacheIdentity": "kdcache.cache",
    "TargetMode": "kdcache.cache",
    # data and views
    "DataConfig": "kdcache.data",
    "ImageDataset": "kdcache.data",
    "open_dataset": "kdcache.data",
    "ViewSpec": "kdcache.augment",
    "ViewParams": "kdcache.augment",
    "ViewPipeline": "kdcache.augment",
    # models
    "create_model": "kdcache.models",
    "list_models": "kdcache.models",
    "register_model": "kdcache.models",
    "load_checkpoint": "kdcache.models",
    "save_checkpoint": "kdcache.models",
    # the commands, as library calls
    "DumpConfig": "kdcache.engine",
    "DumpSummary": "kdcache.engine",
    "TeacherSpec": "kdcache._teacher_spec",
    "dump_teacher": "kdcache.engine",
    "AddTeacherConfig": "kdcache.engine",
    "add_teacher": "kdcache.engine",
    "verify_cache": "kdcache.engine._verify",
    "TrainConfig": "kdcache.train",
    "train_student": "kdcache.train",
    "train_teacher": "kdcache.train",
    "evaluate": "kdcache.train",
    "evaluate_checkpoint": "kdcache.train",
    "evaluate_model": "kdcache.train",
}

# Spelled out (not built from _LAZY) so linters and type checkers see the public names.
__all__ = [
    "__version__",
    # training from a cache in your own code
    "open_cache", "CacheDataset", "DistillationLoss", "LossConfig", "teacher_log_probs", "soft_labels",
    "epoch_views", "StudentWithFeatures", "Embedded", "ensemble_logits",
    # the cache, data, views, models
    "CacheStore", "CacheIdentity", "TargetMode", "DataConfig", "ImageDataset", "open_dataset", "ViewSpec",
    "ViewParams", "ViewPipeline", "create_model", "list_models", "register_model", "load_checkpoint",
    "save_checkpoint",
    # the commands, as library calls
    "DumpConfig", "DumpSummary", "TeacherSpec", "dump_teacher", "AddTeacherConfig", "add_teacher", "verify_cache", "TrainConfig",
    "train_student", "train_teacher", "evaluate", "evaluate_checkpoint", "evaluate_model",
    # errors
    "KdcacheError", "ConfigError", "DataError", "DataNotFoundError", "ModelError", "CheckpointError",
    "CacheError", "CacheNotFoundError", "CacheMismatchError", "CacheIncompleteError", "TeacherOutputError",
    "DownloadUnavailableError",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
