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
import os
import statistics
import time

import torch
from _common import (
    add_main_protocol_args,
    load_results,
    main_protocol_cache,
    main_protocol_student,
    run,
    write_json,
)

from kdcache._teacher import build_teacher
from kdcache.augment import ViewSpec
from kdcache.cache import CacheStore
from kdcache.engine import AddTeacherConfig, add_teacher
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import LossConfig, evaluate_checkpoint, train_student
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
    add_main_protocol_args(ap, workdir="~/.cache/kdcache-bench/ensemble", json_path="bench/results/feature_kd.json")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = load_results(args.json, ("teacher", "rows"))

    def save() -> None:
        write_json(args.json, args, **results)

    cache, train, test, spec, _ = main_protocol_cache(args)  # bench/ensemble.py's cache, whichever makes it
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
            cfg = main_protocol_student(args, cache, train, out, seed, LossConfig(**ROWS[label]))
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
                                    "top5": ev["top5"], **knn, "seconds": seconds,
                                    "resumed": cfg.resume}  # then seconds cover only this call's epochs
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
