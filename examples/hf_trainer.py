"""Distil a student from a kdcache cache with Hugging Face ``Trainer``.

The cached targets travel in the batch: :class:`kdcache.CacheDataset` items carry the replayed
view (``image``), the label distribution (``label``) and the teacher's targets for that view
(``targets``); ``compute_loss`` hands them to :class:`kdcache.DistillationLoss`. A callback calls
``set_epoch`` when each epoch begins (before ``Trainer`` creates the epoch's iterator), so every
epoch trains on the views ``kdcache train-student`` would pick. (accelerate forwards the loader's
``set_epoch`` to the dataset only when the sampler has none, e.g. not under DDP: the callback
makes it certain.)

    pip install transformers accelerate
    python examples/hf_trainer.py --cache kdcache-quickstart/teacher.zarr --student cnn_tiny --epochs 5
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate
from transformers import Trainer, TrainerCallback, TrainingArguments

import kdcache


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss is kdcache's: task loss on the labels, KD loss on the cached targets."""

    def __init__(self, *args: Any, kd_loss: kdcache.DistillationLoss, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kd_loss = kd_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(inputs["image"])
        parts = self.kd_loss(outputs, inputs["label"], inputs["targets"])
        return (parts["loss"], outputs) if return_outputs else parts["loss"]


class SetEpoch(TrainerCallback):
    """Move the dataset to the epoch's cached views before the epoch's batches are drawn."""

    def __init__(self, dataset: kdcache.CacheDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(round(state.epoch or 0))  # state.epoch is a whole number here


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
    p.add_argument("--out", default="runs/hf-student")
    args = p.parse_args(argv)

    cache = kdcache.open_cache(args.cache)
    train = kdcache.CacheDataset(cache, args.data, seed=args.seed)
    student = kdcache.create_model(args.student, num_classes=cache.num_classes)
    loss = kdcache.LossConfig(distill=args.distill, alpha=args.alpha, temperature=args.temperature)
    training_args = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, dataloader_num_workers=args.workers,
        remove_unused_columns=False,  # the batch is kdcache's dict, not the model's keyword arguments
        save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())
    trainer = DistillationTrainer(model=student, args=training_args, train_dataset=train,
                                  data_collator=default_collate, callbacks=[SetEpoch(train)],
                                  kd_loss=kdcache.DistillationLoss(loss, num_classes=cache.num_classes))
    result = trainer.train()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "student.pt")
    kdcache.save_checkpoint(path, student)  # loads with kdcache.load_checkpoint / `kdcache evaluate`
    return {"train_loss": result.training_loss, "steps": result.global_step, "checkpoint": path}


if __name__ == "__main__":
    print(main())
