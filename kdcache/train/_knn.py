"""k-nearest-neighbour accuracy of a model's pooled embeddings, with a split of the data as the memory bank.

How self-supervised and distilled encoders are compared when a class head is missing or not the point
(DINO's weighted k-NN, Caron et al. 2021): every image of the memory bank (by default the data's ``train``
split) and of the query split is embedded on its evaluation view (:func:`~kdcache.models.pooled_embedder`,
the vector a cache's ``embedding`` holds), vectors are L2-normalised, each query's ``k`` most
cosine-similar bank vectors vote for their labels with weight ``exp(similarity / T)`` (T = 0.07), and the class
with the largest total is the prediction (ties: the lower class index). When the query split is the bank
itself, each image's own vector is left out of its neighbours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcache._orphans import exit_with_parent
from kdcache._runtime import select_device
from kdcache._views import EvalViews, identity_collate
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.errors import ConfigError
from kdcache.models import pooled_embedder

__all__ = ["KNN_TEMPERATURE", "embed_views", "knn_predict", "knn_accuracy"]

KNN_TEMPERATURE = 0.07


@torch.inference_mode()
def embed_views(model: nn.Module, spec: ViewSpec, ds, *, batch_size: int = 256, workers: int = 0,
                device: str = "auto") -> tuple[torch.Tensor, np.ndarray]:
    """(L2-normalised float32 embeddings on the CPU, labels) of every image of ``ds`` on its evaluation view."""
    dev = select_device(device)
    embed = pooled_embedder(model.to(dev).eval())
    loader = DataLoader(EvalViews(ds, ViewPipeline(spec)), batch_size=batch_size, num_workers=workers,
                        collate_fn=identity_collate, worker_init_fn=exit_with_parent())
    out, labels = [], []
    for x, y in loader:
        out.append(torch.nn.functional.normalize(embed(x.to(dev))[1].float(), dim=1).cpu())
        labels.append(np.asarray(y))
    return torch.cat(out), np.concatenate(labels).astype(np.int64)


def knn_predict(bank: torch.Tensor, bank_labels: np.ndarray, query: torch.Tensor, *, k: int, num_classes: int,
                temperature: float = KNN_TEMPERATURE, exclude_self: bool = False, chunk: int = 1024) -> np.ndarray:
    """Predicted classes of the (normalised) ``query`` vectors by weighted vote of their ``k`` nearest (cosine)
    ``bank`` vectors; ``exclude_self``: query ``i`` is bank ``i`` and is not its own neighbour."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    k_eff = min(k, len(bank) - (1 if exclude_self else 0))
    if k_eff < 1:
        raise ConfigError(f"the memory bank holds {len(bank)} images: too few for k-NN")
    labels = torch.as_tensor(bank_labels, dtype=torch.int64)
    preds = []
    for s in range(0, len(query), chunk):
        sim = query[s:s + chunk] @ bank.T
        if exclude_self:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + s] = -float("inf")
        top, idx = sim.topk(k_eff, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[idx], (top.double() / temperature).exp())
        preds.append(votes.argmax(dim=1))  # the first maximum: the lower class index on ties
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def knn_accuracy(model: nn.Module, spec: ViewSpec, bank_ds, query_ds, *, k: int = 20, same: bool = False,
                 batch_size: int = 256, workers: int = 0, device: str = "auto") -> dict[str, Any]:
    """Weighted k-NN top-1 (%) of ``query_ds`` against ``bank_ds`` (``same``: they are one split, and each image is
    left out of its own neighbours)."""
    if bank_ds.num_classes != query_ds.num_classes:
        raise ConfigError(f"the memory bank has {bank_ds.num_classes} classes, the evaluated split "
                          f"{query_ds.num_classes}")
    bank, bank_labels = embed_views(model, spec, bank_ds, batch_size=batch_size, workers=workers, device=device)
    if same:
        query, labels = bank, bank_labels
    else:
        query, labels = embed_views(model, spec, query_ds, batch_size=batch_size, workers=workers, device=device)
    pred = knn_predict(bank, bank_labels, query, k=k, num_classes=bank_ds.num_classes, exclude_self=same)
    return {"knn_top1": 100.0 * float((pred == labels).mean()) if len(labels) else 0.0, "knn_k": int(k),
            "knn_bank_images": int(len(bank)), "knn_dim": int(bank.shape[1])}
