"""Model registry and built-in architectures. Importing this package registers every built-in model."""

from kdcache.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCfg,
    create_model,
    is_registered,
    list_models,
    model_cfg,
    register_model,
    set_model_cfg,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelCfg",
    "create_model",
    "is_registered",
    "list_models",
    "model_cfg",
    "register_model",
    "set_model_cfg",
]
