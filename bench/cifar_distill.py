"""Does the cache help on real data? Scratch vs distilled students from the public CIFAR ResNet-56.

One run: dump the public ResNet-56 (../shared) over V views of a stratified CIFAR-10 train subset, then
train the same student twice on the same replayed views — from labels only and distilled from the
cache — and evaluate both (and the teacher) on the CIFAR-10 test split. Prints a table, writes JSON.

    python bench/cifar_distill.py --limit 10000 --views 8 --epochs 15 --student cifar_resnet20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from _common import add_teacher_args, run, teacher_spec, write_json

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.models._checkpoint import save_checkpoint
from kdcache.train import LossConfig, TrainConfig, evaluate_checkpoint, train_student, train_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_teacher_args(ap)
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--scale", type=float, nargs=2, default=(0.6, 1.0))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="first fine-tune the public teacher on the train subset (kdcache train-teacher)")
    ap.add_argument("--json", default="bench/results/cifar_distill.json")
    args = ap.parse_args()
    train = DataConfig(source=args.data, limit=args.limit)
    test = DataConfig(source=args.data, split="test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "teacher.zarr")
        spec = teacher_spec(args)
        finetune_s = 0.0
        if args.finetune_epochs:
            t0 = time.perf_counter()
            ft = train_teacher(TrainConfig(data=train, out=os.path.join(tmp, "ft"), model=args.teacher,
                                           init_weights=None if args.random_init else args.weights, epochs=args.finetune_epochs, lr=5e-4,
                                           warmup_epochs=0.5, view={"scale": tuple(args.scale)}, val_split=None,
                                           workers=args.workers), progress=False, log=lambda _m: None)
            finetune_s = time.perf_counter() - t0
            spec = TeacherSpec(weights=ft["last"])
        t0 = time.perf_counter()
        s = dump_teacher(DumpConfig(data=train, out=cache, teacher=spec,
                                    views=args.views, view={"scale": tuple(args.scale)}, workers=args.workers,
                                    batch_size=256), progress=False, log=lambda _m: None)
        dump_s = time.perf_counter() - t0
        # the teacher as a kdcache checkpoint, so it is evaluated exactly like the students
        from kdcache.engine import build_teacher

        t = build_teacher(spec, num_classes=10)
        teacher_ckpt = os.path.join(tmp, "teacher.pt")
        save_checkpoint(teacher_ckpt, t.model)
        tuned = f" fine-tuned {args.finetune_epochs} ep" if args.finetune_epochs else " (public)"
        rows.append({"model": f"teacher {args.teacher}{tuned}", "top1": evaluate_checkpoint(teacher_ckpt, test)["top1"],
                     "seconds": dump_s + finetune_s, "stage": (f"fine-tune {finetune_s:.0f}s + " if finetune_s else "")
                     + f"dump {args.views} views x {s.num_samples} images {dump_s:.0f}s"})
        for name, distill in (("scratch", "none"), ("distilled", "soft")):
            out = os.path.join(tmp, name)
            t0 = time.perf_counter()
            train_student(TrainConfig(data=train, out=out, model=args.student, cache=cache, epochs=args.epochs,
                                      batch_size=128, lr=args.lr, workers=args.workers, val_split=None,
                                      loss=LossConfig(distill=distill, alpha=0.7, temperature=4.0)),
                          progress=False, log=lambda _m: None)
            secs = time.perf_counter() - t0
            top1 = evaluate_checkpoint(os.path.join(out, "last.pt"), test)["top1"]
            rows.append({"model": f"student {args.student} {name}", "top1": top1, "seconds": secs,
                         "stage": f"{args.epochs} epochs"})
    print(f"CIFAR-10, {s.num_samples} train images, {args.views} cached views (scale {args.scale}), "
          f"test split 10,000 images")
    print(f"{'model':<38} {'test top-1':>10} {'wall':>8}  stage")
    for r in rows:
        print(f"{r['model']:<38} {r['top1']:>9.2f}% {r['seconds']:>7.0f}s  {r['stage']}")
    write_json(args.json, args, dump=s.to_dict(), rows=rows)


if __name__ == "__main__":
    run(main)
