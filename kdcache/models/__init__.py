"""Model registry and built-in architectures. Importing this package registers every built-in model."""

from kdcache.models import _bit, _cifar_resnet, _cnn, _deit, _keras_vit, _tokenlearner, _vit  # noqa: F401 (registers models)
from kdcache.models._cfg import IMAGENET_MEAN, IMAGENET_STD, ModelCfg, set_model_cfg
from kdcache.models._checkpoint import load_checkpoint, load_weights, read_state_dict, save_checkpoint
from kdcache.models._embed import PooledEmbedder, pooled_embedder
from kdcache.models._registry import (
    create_model,
    is_registered,
    list_models,
    model_cfg,
    model_description,
    model_tags,
    register_model,
)
from kdcache.models._summary import format_table, model_table

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelCfg",
    "PooledEmbedder",
    "create_model",
    "format_table",
    "is_registered",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "model_cfg",
    "model_description",
    "model_table",
    "model_tags",
    "pooled_embedder",
    "read_state_dict",
    "register_model",
    "save_checkpoint",
    "set_model_cfg",
]
