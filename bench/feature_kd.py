"""Students from a teacher's cached embeddings: k-NN and top-1 against labels-only and logit-KD students.

The main protocol of ``bench/cifar10.py`` (2,000 stratified CIFAR-10 training images, resized-crop 0.6-1 and
flip at 32 px, 8 cached views; the ResNet-20 student, 20 epochs, AdamW 3e-3; ``last.pt`` on the test split).
The cache is the one ``bench/ensemble.py`` uses (same dump, same folder: whichever runs first makes it); the
fine-tuned ResNet-56 is added over its views a second time as an **embedding-only** teacher ``emb`` (its
64-d pooled features, ``none+pooled:float16``), so feature KD reads the same views' embeddings. Rows, each
``--seeds``:

* ``labels``: cross-entropy only;
* ``feature``: the embedding alone, no labels (``task_weight`` 0, cosine feature loss through the projection);
* ``feature+labels``: the embedding and the labels;
* ``logit``: soft KD from the teacher's logits (α 0.7, T 4);
* ``logit+feature``: both.

Every student, and the teacher, is scored by top-1 and by weighted k-NN top-1 (k = 20, cosine, DINO's weighting)
of its pooled embedding, the 2,000 training images as the memory bank and the test split as queries. Rows are
kept in the JSON as they finish; a rerun resumes.

    python bench/feature_kd.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch
from _common import SHARED, run, write_json

from kdcache._teacher import build_teacher
from kdcache.augment import ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import AddTeacherConfig, DumpConfig, TeacherSpec, add_teacher, dump_teacher
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import LossConfig, TrainConfig, evaluate_checkpoint, train_student
from kdcache.train._knn import knn_accuracy

ROWS = {
    "labels": dict(distill="none"),
    "feature": dict(distill="none", feature_weight=1.0, task_weight=0.0, feature_teacher="emb"),
    "feature+labels": dict(distill="none", feature_weight=1.0, feature_teacher="emb"),
    "logit": dict(distill="soft", alpha=0.7, temperature=4.0),
    "logit+feature": dict(distill="soft", alpha=0.7, temperature=4.0, feature_weight=1.0, feature_teacher="emb"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--weights", default="bench/teachers/cifar_resnet56_ft50k.pt")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=None, help="a stratified test subset (smoke runs)")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--student", default="cifar_resnet20")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=os.path.expanduser("~/.cache/kdcache-bench/ensemble"))
    ap.add_argument("--json", default="bench/results/feature_kd.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    train = DataConfig(source=args.data, limit=args.limit)
    test = DataConfig(source=args.data, split="test", limit=args.test_limit)
    spec = TeacherSpec(name="cifar_resnet56", weights=args.weights)
    done: dict[str, Any] = json.load(open(args.json)) if os.path.exists(args.json) else {}
    results: dict[str, Any] = {k: done[k] for k in ("teacher", "rows") if k in done}
    results.setdefault("rows", {})

    def save() -> None:
        write_json(args.json, args, **results)

    cache = os.path.join(args.workdir, f"main_V{args.views}.zarr")
    dump_teacher(DumpConfig(data=train, out=cache, teacher=spec, views=args.views, seed=0, view={"scale": (0.6, 1.0)},
                            batch_size=args.batch_size, workers=args.workers), progress=False, log=print)
    a = add_teacher(AddTeacherConfig(cache=cache, name="emb", teacher=spec, targets="none+pooled:float16",
                                     batch_size=args.batch_size, workers=args.workers, device="cpu"),
                    progress=False, log=print)
    bank, queries = train.open().preload(), test.open().preload()
    if "teacher" not in results:
        view = ViewSpec.from_dict(CacheStore.open(cache).identity.view_spec)
        model = build_teacher(spec, num_classes=bank.num_classes).model.eval()
        results["teacher"] = {"embedding_dim": CacheStore.open(a.out).layout.embedding_dim,
                              "add_seconds": a.seconds if a.views_computed else None,
                              **knn_accuracy(model, view, bank, queries, k=args.k, batch_size=args.batch_size,
                                             workers=args.workers)}
        save()
    for seed in args.seeds:
        for label in args.rows:
            rid = f"{args.student}/{label}/s{seed}"
            if rid in results["rows"]:
                continue
            out = os.path.join(args.workdir, "feature_runs", rid.replace("/", "__"))
            cfg = TrainConfig(data=train, out=out, model=args.student, cache=cache, epochs=args.epochs,
                              batch_size=128, lr=3e-3, seed=seed, workers=args.workers, val_split=None,
                              test_split=None, resume=os.path.exists(os.path.join(out, "last.pt")),
                              loss=LossConfig(**ROWS[label]))
            print(f"== {rid}", flush=True)
            t0 = time.perf_counter()
            train_student(cfg, progress=False, log=print)
            seconds = time.perf_counter() - t0
            ckpt = os.path.join(out, "last.pt")
            ev = evaluate_checkpoint(ckpt, test, workers=args.workers)
            model, extra = load_checkpoint(ckpt)
            knn = knn_accuracy(model.eval(), ViewSpec.from_dict(extra["view_spec"]), bank, queries, k=args.k,
                               batch_size=args.batch_size, workers=args.workers)
            results["rows"][rid] = {"row": label, "seed": seed, "loss": ROWS[label], "top1": ev["top1"],
                                    "top5": ev["top5"], **knn, "seconds": seconds}
            save()
    t = results["teacher"]
    print(f"teacher        k-NN top-1 {t['knn_top1']:.2f}")
    for label in args.rows:
        got = [r for r in results["rows"].values() if r["row"] == label]
        if got:
            top1 = [r["top1"] for r in got]
            knn = [r["knn_top1"] for r in got]
            print(f"{label:<15} top-1 {statistics.mean(top1):.2f} ± {statistics.pstdev(top1):.2f}  k-NN top-1 "
                  f"{statistics.mean(knn):.2f} ± {statistics.pstdev(knn):.2f}  ({len(got)} seeds)")


if __name__ == "__main__":
    run(main)
