"""Several teachers in one cache: an ensemble's accuracy, what adding a teacher costs, students from the ensemble.

The main protocol of ``bench/cifar10.py`` (2,000 stratified CIFAR-10 training images, resized-crop 0.6-1 and
flip at 32 px, 8 views; the ResNet-20 student, 20 epochs, AdamW 3e-3, soft KD α 0.7 at T 4; ``last.pt`` on the
test split): the cache is dumped with the fine-tuned ResNet-56 (``main``) and the public CIFAR ResNets are added
over its views with ``add_teacher``. Three parts, each resumable (finished parts and rows are kept in the JSON):

* ``teachers``: every teacher's top-1 on the test split and the ensembles' (the mean of the probabilities);
* ``cost``: adding a teacher against that teacher's pure inference over the same number of views, alternating
  rounds (goal ≤ 1.05x: no view is drawn anew, but each is decoded and rebuilt from its parameters);
* ``students``: the student distilled from the best single teacher and from the ensemble, ``--seeds``.

    python bench/ensemble.py --parts teachers cost students --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from typing import Any

import numpy as np
import torch
from _common import (
    SHARED,
    add_main_protocol_args,
    alternate,
    load_results,
    main_protocol_cache,
    main_protocol_student,
    run,
    write_json,
)

from kdcache._teacher import build_teacher
from kdcache._views import EvalViews, identity_collate
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import AddTeacherConfig, TeacherSpec, add_teacher
from kdcache.train import LossConfig, evaluate_checkpoint, train_student

WEIGHTS = SHARED / "weights"
ADDED = {"r56": ("cifar_resnet56", WEIGHTS / "resnet56-4bfd9763.th"),
         "r44": ("cifar_resnet44", WEIGHTS / "resnet44-014dd654.th"),
         "r32": ("cifar_resnet32", WEIGHTS / "resnet32-d509ac18.th")}


def _probs(spec: TeacherSpec, test: DataConfig, view: ViewSpec, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) softmax of the teacher on the test split's evaluation views, and the labels."""
    ds = test.open()
    model = build_teacher(spec, num_classes=ds.num_classes).model.eval()
    views = EvalViews(ds, ViewPipeline(view))
    loader = torch.utils.data.DataLoader(views, batch_size=batch, collate_fn=identity_collate)
    out, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            out.append(torch.softmax(model(x).float(), dim=1).numpy())
            labels.append(np.asarray(y))
    return np.concatenate(out), np.concatenate(labels)


def part_teachers(args, cache: str, test: DataConfig, teachers: dict[str, TeacherSpec]) -> dict[str, Any]:
    view = ViewSpec.from_dict(CacheStore.open(cache).identity.view_spec)
    probs, labels = {}, None
    for name, spec in teachers.items():
        probs[name], labels = _probs(spec, test, view, args.batch_size)
    top1 = {name: float((p.argmax(1) == labels).mean() * 100) for name, p in probs.items()}
    names = list(teachers)
    for k in range(2, len(names) + 1):
        members = names[:k]
        mean = sum(probs[n] for n in members) / k
        top1["+".join(members)] = float((mean.argmax(1) == labels).mean() * 100)
    return {"test_images": int(len(labels)), "top1": top1}


def part_cost(args, cache: str, spec: TeacherSpec) -> dict[str, Any]:
    """add-teacher (decode + replay + forward + write) against the forward alone over as many views."""
    store = CacheStore.open(cache)
    views = store.num_samples * store.num_views
    size = ViewSpec.from_dict(store.identity.view_spec).size
    model = build_teacher(spec, num_classes=store.num_classes).model.eval()
    x = torch.randn(args.batch_size, 3, size, size)

    def added(r: int) -> float:
        work = f"{cache}.cost{r}.zarr"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(cache, work, ignore=shutil.ignore_patterns("teachers"))
        t0 = time.perf_counter()
        add_teacher(AddTeacherConfig(cache=work, name="cost", teacher=spec, batch_size=args.batch_size,
                                     workers=args.workers, device="cpu"), progress=False, log=lambda _m: None)
        seconds = time.perf_counter() - t0
        shutil.rmtree(work, ignore_errors=True)
        return views / seconds

    def inference(_r: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(-(-views // args.batch_size)):
                model(x)
        return (-(-views // args.batch_size) * args.batch_size) / (time.perf_counter() - t0)

    rates = alternate({"add-teacher": added, "pure inference": inference}, args.rounds, "views/s")
    a, b = statistics.median(rates["add-teacher"]), statistics.median(rates["pure inference"])
    return {"views": views, "views_per_second": rates, "median_add_teacher": a, "median_inference": b,
            "time_ratio": b / a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_main_protocol_args(ap, workdir="~/.cache/kdcache-bench/ensemble", json_path="bench/results/ensemble.json")
    ap.add_argument("--added", nargs="+", default=["r56", "r44"], choices=sorted(ADDED))
    ap.add_argument("--parts", nargs="+", default=["teachers", "cost", "students"],
                    choices=["teachers", "cost", "students"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = load_results(args.json, ("cache", "teachers", "cost", "rows"))

    def save() -> None:
        write_json(args.json, args, **results)

    t0 = time.perf_counter()
    cache, train, test, main_spec, s = main_protocol_cache(args)
    teachers = {"main": main_spec, **{n: TeacherSpec(name=ADDED[n][0], weights=str(ADDED[n][1])) for n in args.added}}
    info = results.setdefault("cache", {"dump_seconds": {}})
    if s.views_computed:
        info["dump_seconds"]["main"] = time.perf_counter() - t0
    for name in args.added:
        t0 = time.perf_counter()
        a = add_teacher(AddTeacherConfig(cache=cache, name=name, teacher=teachers[name], batch_size=args.batch_size,
                                         workers=args.workers, device="cpu"), progress=False, log=print)
        if a.views_computed:
            info["dump_seconds"][name] = time.perf_counter() - t0
        info.setdefault("label_agreement", {})[name] = a.label_agreement
    info["label_agreement"]["main"] = s.label_agreement
    save()
    if "teachers" in args.parts and "teachers" not in results:
        results["teachers"] = part_teachers(args, cache, test, teachers)
        print(json.dumps(results["teachers"], indent=1))
        save()
    if "cost" in args.parts and "cost" not in results:
        results["cost"] = part_cost(args, cache, teachers[args.added[0]])
        print(json.dumps({k: v for k, v in results["cost"].items() if k != "views_per_second"}))
        save()
    if "students" in args.parts:
        for seed in args.seeds:
            for label, names in (("single", ("main",)), ("ensemble", ("main", *args.added))):
                rid = f"{args.student}/{label}/s{seed}"
                if rid in results["rows"]:
                    continue
                out = os.path.join(args.workdir, "runs", rid.replace("/", "__"))
                cfg = main_protocol_student(args, cache, train, out, seed,
                                            LossConfig(distill="soft", alpha=0.7, temperature=4.0, teachers=names))
                print(f"== {rid}", flush=True)
                t0 = time.perf_counter()
                train_student(cfg, progress=False, log=print)
                ev = evaluate_checkpoint(os.path.join(out, "last.pt"), test, workers=args.workers)
                results["rows"][rid] = {"teachers": list(names), "seed": seed, "top1": ev["top1"],
                                        "top5": ev["top5"], "seconds": time.perf_counter() - t0,
                                        "resumed": cfg.resume}  # then seconds cover only this call's epochs
                save()
    rows = results["rows"]
    for label in ("single", "ensemble"):
        got = [r["top1"] for k, r in rows.items() if f"/{label}/" in k]
        if got:
            print(f"{label:<9} top-1 {statistics.mean(got):.2f} ± {statistics.pstdev(got):.2f} over {len(got)} seeds")


if __name__ == "__main__":
    run(main)
