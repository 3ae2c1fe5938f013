"""Student training throughput: online KD (teacher forward every step) vs kdcache (cached targets).

Same data, student, views, batch size and loss in one run, so the machine's noise hits both:
* ``online``  — each batch: build the views, run the teacher under inference_mode (``OnlineTargets``),
  train the student (``kdcache train-student --online-teacher``'s loop);
* ``cached``  — each batch: replay the cached views from their recorded parameters, take the teacher's
  targets from the epoch's block reads, train the student (kdcache train-student's loop).
Also times the one-time dump, and derives after how many student epochs the cache has paid for itself.
Prints a table, writes JSON.

    python bench/online_vs_cached.py --limit 2048 --steps 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from _common import add_teacher_args, run, teacher_spec, write_json
from torch.utils.data import DataLoader

from kdcache._views import ReplayViews, ViewDraws, identity_collate
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, build_teacher, dump_teacher
from kdcache.models import create_model
from kdcache.train import DistillationLoss, LossConfig, epoch_views, train_one_epoch
from kdcache.train._targets import OnlineTargets


def timed_epoch(model, loader, loss_fn, labels, teacher_targets, steps=20):
    """Student images/s through kdcache's one training loop; ``teacher_targets`` is the cached arrays or
    an ``OnlineTargets`` source (the teacher's forward pass on every batch, inside the timed loop)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    stats = train_one_epoch(model, loader, loss_fn=loss_fn, optimizer=opt, scheduler=None,
                            device=torch.device("cpu"), labels=labels, teacher_targets=teacher_targets,
                            progress=False, max_steps=steps)
    return stats["images"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_teacher_args(ap)
    ap.add_argument("--limit", type=int, default=2048)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12, help="student steps timed per mode and repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="bench/results/online_vs_cached.json")
    args = ap.parse_args()
    data = DataConfig(source=args.data, limit=args.limit)
    ds = data.open().preload()
    labels = np.asarray(ds.labels)
    loss_fn = DistillationLoss(LossConfig(distill="soft"), ds.num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "c.zarr")
        t0 = time.perf_counter()
        s = dump_teacher(DumpConfig(data=data, out=cache, teacher=teacher_spec(args),
                                    views=args.views, workers=0, batch_size=256), progress=False, log=lambda _m: None)
        dump_seconds = time.perf_counter() - t0
        store = CacheStore.open(cache)
        spec = ViewSpec.from_dict(store.identity.view_spec)
        pipeline = ViewPipeline(spec)
        teacher = build_teacher(teacher_spec(args), num_classes=ds.num_classes).model
        arrays = store.read_views(epoch_views(store.done_units(), epoch=0, seed=0))
        targets = {k: arrays.pop(k) for k in ("logits", "argmax")}
        perm = np.random.default_rng(0).permutation(len(ds)).tolist()
        batches = [perm[i:i + args.batch_size] for i in range(0, len(perm), args.batch_size)]
        online_loader = DataLoader(ViewDraws(ds, pipeline, 123), collate_fn=identity_collate, num_workers=0,
                                   batch_sampler=[[(i, 0) for i in b] for b in batches])
        cached_loader = DataLoader(ReplayViews(ds, pipeline, arrays), collate_fn=identity_collate, num_workers=0,
                                   batch_sampler=batches)
        rates = {"online": [], "cached": []}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both modes
            torch.manual_seed(0)
            student = create_model(args.student, num_classes=ds.num_classes)
            rates["online"].append(timed_epoch(student, online_loader, loss_fn, labels, OnlineTargets(teacher),
                                               steps=args.steps))
            torch.manual_seed(0)
            student = create_model(args.student, num_classes=ds.num_classes)
            rates["cached"].append(timed_epoch(student, cached_loader, loss_fn, labels, targets,
                                               steps=args.steps))
    online, cached = float(np.median(rates["online"])), float(np.median(rates["cached"]))
    epoch_imgs = len(ds)
    saved_per_epoch = epoch_imgs / online - epoch_imgs / cached
    breakeven = dump_seconds / saved_per_epoch if saved_per_epoch > 0 else float("inf")
    result = {"dump_seconds": dump_seconds, "dump_views_per_second": s.images_per_second,
              "online_images_per_second": online, "cached_images_per_second": cached,
              "speedup": cached / online, "breakeven_student_epochs": breakeven, "raw": rates}
    print(f"teacher {args.teacher}, student {args.student}, {len(ds)} images, batch {args.batch_size}")
    print(f"{'mode':<8} {'student img/s':>14}")
    print(f"{'online':<8} {online:>14.1f}\n{'cached':<8} {cached:>14.1f}")
    print(f"speed-up {cached / online:.2f}x; dump of {args.views} views took {dump_seconds:.1f} s "
          f"({s.images_per_second:.0f} views/s); the cache pays for itself after {breakeven:.2f} student epochs")
    write_json(args.json, args, **result)


if __name__ == "__main__":
    run(main)
