"""Distil a student from a kdcache cache with Lightning.

A ``LightningDataModule`` serves :class:`kdcache.CacheDataset` and moves it to each epoch's cached
views in ``train_dataloader()``, which Lightning calls again every epoch
(``reload_dataloaders_every_n_epochs=1``) before it draws the epoch's batches — also after a resume,
so every epoch trains on the views ``kdcache train-student`` would pick. The ``LightningModule``'s
``training_step`` hands the batch's labels and cached targets to :class:`kdcache.DistillationLoss`.
Under DDP, Lightning gives the loader a ``DistributedSampler`` and sets its epoch itself.

    pip install lightning
    python examples/lightning_module.py --cache kdcache-quickstart/teacher.zarr --student cnn_tiny --epochs 5
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

import kdcache


class CacheDataModule(L.LightningDataModule):
    """The cache's replayed views, labels and teacher targets, one epoch's views per loader."""

    def __init__(self, dataset: kdcache.CacheDataset, *, batch_size: int, workers: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers

    def train_dataloader(self) -> DataLoader:
        self.dataset.set_epoch(self.trainer.current_epoch)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.workers)


class DistilledStudent(L.LightningModule):
    """A student trained on ``(1 - alpha) * task + alpha * KD`` from cached teacher targets."""

    def __init__(self, student: nn.Module, loss_fn: kdcache.DistillationLoss, *, lr: float) -> None:
        super().__init__()
        self.student, self.loss_fn, self.lr = student, loss_fn, lr

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.loss_fn(self.student(batch["image"]), batch["label"], batch["targets"])
        self.log_dict({"loss": parts["loss"], "kd_loss": parts["kd_loss"]}, prog_bar=True)
        return parts["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.student.parameters(), lr=self.lr)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="a cache made by `kdcache dump-teacher`")
    p.add_argument("--data", default=None, help="its data source (default: the one the cache records)")
    p.add_argument("--student", default="cnn_tiny")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--distill", default="soft", choices=["soft", "hard", "none"])
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the view order's seed (train-student's --seed)")
    p.add_argument("--out", default="runs/lightning-student")
    args = p.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    cache = kdcache.open_cache(args.cache)
    data = CacheDataModule(kdcache.CacheDataset(cache, args.data, seed=args.seed), batch_size=args.batch_size,
                           workers=args.workers)
    loss = kdcache.LossConfig(distill=args.distill, alpha=args.alpha, temperature=args.temperature)
    module = DistilledStudent(kdcache.create_model(args.student, num_classes=cache.num_classes),
                              kdcache.DistillationLoss(loss, num_classes=cache.num_classes), lr=args.lr)
    trainer = L.Trainer(max_epochs=args.epochs, reload_dataloaders_every_n_epochs=1,
                        default_root_dir=args.out, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "student.pt")
    kdcache.save_checkpoint(path, module.student)  # loads with kdcache.load_checkpoint / `kdcache evaluate`
    return {"loss": float(trainer.callback_metrics["loss"]), "steps": trainer.global_step, "checkpoint": path}


if __name__ == "__main__":
    print(main())
