"""The accuracy table on CIFAR-10: scratch vs online vs cached distillation, one protocol for every row.

Every row trains the same student with the same loop, loss, optimiser, schedule, batch size and view
spec; only the targets differ: labels only (scratch), the teacher run online on fresh views every step
(online soft/hard), or the teacher's cached targets for V replayed views (cached). One cache is grown
with ``add_views`` through V = 1, 2, 4, 8, 16 (rows for each V run while the cache has exactly V views);
MixUp/CutMix and top-k caches are dumped separately. Students are evaluated on the test split.

Rows are written to the JSON file as they finish and a rerun skips rows already there (same arguments),
so the table can be built over several sessions:

    python bench/cifar10.py --plots docs

The defaults are the main protocol (the ResNet-20 student, 2,000 training images, 20 epochs, every row,
the committed fine-tuned teacher): about 95 minutes of a quiet 2-core CPU. The transformers' protocol
takes ``--limit 5000 --epochs 30`` (docs/benchmarks.md). ``--full`` uses the whole 50,000-image training
split. ``--rows main`` runs only the main student's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from _common import COST_HEAD, SHARED, accuracy_text, cost_text, run, write_json

from kdcache._report import read_metrics
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CacheBusyError, RunError
from kdcache.train import LossConfig, TrainConfig, evaluate_checkpoint, train_student

GROW = (1, 2, 4, 8, 16)
BUSY_WAIT, BUSY_POLL = 7200.0, 5.0  # seconds a row waits for another process dumping the same cache; poll period


@dataclass(frozen=True)
class Row:
    id: str
    student: str
    targets: str            # scratch | online | cached
    distill: str            # none | soft | hard
    cache: str | None       # full | mix | topk3 (cached and scratch rows replay a cache's views)
    views: int | None       # cached views the row trains on (None for online)
    seed: int = 0
    student_args: dict[str, Any] = field(default_factory=dict)


def plan(args) -> list[Row]:
    main, kw = args.student, json.loads(args.student_args)
    rows: list[Row] = []
    for s in args.seeds:
        rows += [Row(f"{main}/scratch/s{s}", main, "scratch", "none", "full", 8, s, kw),
                 Row(f"{main}/online-soft/s{s}", main, "online", "soft", "full", None, s, kw),
                 Row(f"{main}/cached-soft-V8/s{s}", main, "cached", "soft", "full", 8, s, kw)]
    rows += [Row(f"{main}/online-hard/s0", main, "online", "hard", "full", None, 0, kw)]
    rows += [Row(f"{main}/cached-hard-V{v}/s0", main, "cached", "hard", "full", v, 0, kw) for v in args.hard_views]
    rows += [
        Row(f"{main}/cached-soft-mix-V8/s0", main, "cached", "soft", "mix", 8, 0, kw),
        Row(f"{main}/cached-soft-top3-V8/s0", main, "cached", "soft", "topk3", 8, 0, kw)]
    rows += [Row(f"{main}/cached-soft-V{v}/s0", main, "cached", "soft", "full", v, 0, kw) for v in GROW if v != 8]
    if args.rows == "all":
        others = (("vit_tokenlearner_mini_32", "vit_tokenlearner_mini_32", "soft", {}),
                  ("vit_mini_32", "vit_mini_32", "soft", {}),  # the same ViT without TokenLearner
                  # DeiT-Ti's layout (patch 4, distillation token) at 96 wide and 6 blocks: DeiT-Ti itself (5.4 M
                  # parameters) trains 7x slower than ResNet-20 on 2 CPU cores; this one (0.68 M) about as fast
                  ("deit_mini_patch4_32_distilled", "deit_mini_patch4_32_distilled", "hard", {}))
        for tag, st, distill, extra in others:
            for s in args.seeds:
                rows += [Row(f"{tag}/scratch/s{s}", st, "scratch", "none", "full", 8, s, extra),
                         Row(f"{tag}/online-{distill}/s{s}", st, "online", distill, "full", None, s, extra),
                         Row(f"{tag}/cached-{distill}-V8/s{s}", st, "cached", distill, "full", 8, s, extra)]
            if distill == "soft":  # the ViTs also on the DeiT recipe's hard targets (no distillation token)
                rows += [Row(f"{tag}/online-hard/s0", st, "online", "hard", "full", None, 0, extra),
                         Row(f"{tag}/cached-hard-V8/s0", st, "cached", "hard", "full", 8, 0, extra)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--teacher", default="cifar_resnet56")
    ap.add_argument("--teacher-weights", default="bench/teachers/cifar_resnet56_ft50k.pt",
                    help="the (fine-tuned) teacher; the default is the public ResNet-56 fine-tuned on the whole "
                         "training split (run from the repository's root)")
    ap.add_argument("--student", default="cifar_resnet20")
    ap.add_argument("--student-args", default="{}", help="JSON keyword arguments of the main student's model")
    ap.add_argument("--limit", type=int, default=2000, help="stratified training subset (ignored with --full)")
    ap.add_argument("--full", action="store_true", help="the whole 50,000-image training split")
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate on a stratified test subset")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--scale", type=float, nargs=2, default=(0.6, 1.0))
    ap.add_argument("--view-preset", default=None,
                    help="dump every cache with this view preset (kdcache.augment.PRESETS: cifar, deit-cifar, ...); "
                         "online rows then draw the preset's views too")
    ap.add_argument("--view-options", default=None, type=_json_object,
                    help='JSON view options over the preset, e.g. \'{"mix": "none"}\' (the DeiT views without mixing)')
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hard-views", type=int, nargs="+", default=[8],
                    help="views of the main student's cached hard-KD rows (the full cache grows to the largest)")
    ap.add_argument("--rows", choices=("main", "all"), default="all")
    ap.add_argument("--only", nargs="*", default=None, help="run only rows whose id contains one of these")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--workdir", default="bench/work/cifar10", help="caches and runs (kept for reruns)")
    ap.add_argument("--json", default="bench/results/cifar10.json")
    ap.add_argument("--plots", default=None, help="directory for the accuracy-vs-views and -vs-cost PNGs")
    args = ap.parse_args()

    train = DataConfig(source=args.data, limit=None if args.full else args.limit)
    test = DataConfig(source=args.data, split="test", limit=args.test_limit)
    teacher = TeacherSpec(name=args.teacher, weights=args.teacher_weights)
    os.makedirs(args.workdir, exist_ok=True)
    key = {k: v for k, v in vars(args).items() if k not in ("only", "json", "plots", "workers", "seeds", "rows", "hard_views")}
    for opt in ("view_preset", "view_options"):
        if key[opt] is None:
            del key[opt]  # results recorded before the option existed keep their key
    done = _load(args.json, key)
    dumps: dict[str, dict[str, Any]] = done.get("dumps", {})
    results: dict[str, dict[str, Any]] = done.get("rows", {})

    def save() -> None:
        write_json(args.json, args, key=key, dumps=dumps, rows=results, table=table(results, dumps, args))

    def cache_at(name: str, views: int | None) -> str:
        """The cache ``name`` with exactly ``views`` views (the full cache grows; dump time is cumulative).
        ``views=None`` (online rows, which take only the cache's view spec): any view count, 8 if new."""
        path = os.path.join(args.workdir, f"{name}.zarr")
        view = {"scale": tuple(args.scale), "preset": args.view_preset, **json.loads(args.view_options or "{}")}
        if name == "mix":
            view["mix"] = "both"
        d = dumps.setdefault(name, {"views": 0, "seconds": 0.0, "seconds_at": {}})
        if views is None:
            views = d["views"] or 8
        if d["views"] > views:
            raise SystemExit(f"cache {name} already has {d['views']} views > {views}: run rows in V order "
                             f"(delete {path} and its dumps entry to start over)")
        if d["views"] < views:
            cfg = DumpConfig(data=train, out=path, teacher=teacher, view=view, seed=0, batch_size=256,
                             workers=args.workers, targets="topk:3" if name == "topk3" else "full",
                             views=views if d["views"] == 0 else None,
                             add_views=0 if d["views"] == 0 else views - d["views"])
            waited = 0.0
            while True:  # rows run side by side in two queues: one dumps (or checks) the cache, the other waits
                t0 = time.perf_counter()
                try:
                    s = dump_teacher(cfg, progress=False, log=print)
                    break
                except CacheBusyError as e:
                    if waited >= BUSY_WAIT:
                        raise
                    if waited == 0:
                        print(f"{e}: waiting up to {BUSY_WAIT:.0f} s", flush=True)
                    time.sleep(BUSY_POLL)
                    waited += BUSY_POLL
            d.update(views=s.num_views, seconds=d["seconds"] + time.perf_counter() - t0, num_samples=s.num_samples)
            d["seconds_at"][str(s.num_views)] = d["seconds"]
            save()
        return path

    old = [rid for rid, res in results.items() if "train_seconds" not in res]
    for rid in old:  # rows recorded before train_seconds existed: from their run directory
        results[rid]["train_seconds"] = _train_seconds(os.path.join(args.workdir, "runs", rid.replace("/", "__")))
    if old:
        save()
    rows = [r for r in plan(args) if not args.only or any(o in r.id for o in args.only)]
    # cached rows by growing V, so each runs while its cache has exactly V views
    rows.sort(key=lambda r: (r.views or 8, r.cache or ""))
    for r in rows:
        if r.id in results:
            continue
        cache = cache_at(r.cache, r.views)
        out = os.path.join(args.workdir, "runs", r.id.replace("/", "__"))
        cfg = TrainConfig(
            data=train, out=out, model=r.student, model_kwargs=dict(r.student_args), cache=cache,
            teacher=teacher if r.targets == "online" else None, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, seed=r.seed, workers=args.workers, val_split=None, resume=os.path.exists(
                os.path.join(out, "last.pt")),
            loss=LossConfig(distill=r.distill, alpha=args.alpha, temperature=args.temperature))
        print(f"== {r.id}")
        t0 = time.perf_counter()
        train_student(cfg, progress=False, log=print)
        seconds = time.perf_counter() - t0
        ev = evaluate_checkpoint(os.path.join(out, "last.pt"), test, workers=args.workers)
        n = len(train.open())
        results[r.id] = {**r.__dict__, "top1": ev["top1"], "top5": ev["top5"], "seconds": seconds,
                         "train_seconds": _train_seconds(out),
                         "teacher_forwards": n * args.epochs if r.targets == "online" else 0}
        save()
    print(format_table(table(results, dumps, args)))
    if args.plots:
        plot(table(results, dumps, args), args.plots, args.student)
        plot_students(table(results, dumps, args), os.path.join(
            args.plots, os.path.splitext(os.path.basename(args.json))[0] + "_students.png"))


def _json_object(text: str) -> str:
    """``--view-options``: a JSON object, kept as given (it is part of the results' key)."""
    try:
        ok = isinstance(json.loads(text), dict)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not ok:
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"mix\": \"none\"}'")
    return text


def _load(path: str, key: dict[str, Any]) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        old = json.load(f)
    if old.get("key") != json.loads(json.dumps(key)):
        raise SystemExit(f"{path} holds results of other arguments; choose another --json")
    return old


def _train_seconds(run_dir: str) -> float | None:
    """A run's training time as its epoch count times its fastest epoch: the cost on a quiet machine. On a
    shared machine a run's wall time and even its median epoch carry whatever else ran (the fastest epochs of
    the same row agree across seeds within ~10%, their medians differ up to 3x); a quiet run's median epoch is
    3-8% above its fastest. Whole for a run resumed after a kill, whose invocation's wall time covers only the
    epochs after the resume. None without a metrics file."""
    try:
        secs = [r["train/epoch_seconds"] for r in read_metrics(run_dir) if "train/epoch_seconds" in r]
    except RunError:  # no run directory or no epoch recorded
        return None
    return len(secs) * min(secs) if secs else None


def table(results: dict[str, dict], dumps: dict[str, dict], args) -> list[dict[str, Any]]:
    """One line per row kind: mean ± std over seeds, forwards, wall time, cost of N = 1, 5, 20 runs."""
    groups: dict[str, list[dict]] = {}
    for rid, r in results.items():
        groups.setdefault(rid.rsplit("/", 1)[0], []).append(r)
    out = []
    for name, rs in groups.items():
        top1 = [r["top1"] for r in rs]
        mean = sum(top1) / len(top1)
        std = (sum((x - mean) ** 2 for x in top1) / (len(top1) - 1)) ** 0.5 if len(top1) > 1 else None
        # the run's cost: epochs x fastest epoch where recorded, else the wall time of its invocation
        run_s = sum(r.get("train_seconds") or r["seconds"] for r in rs) / len(rs)
        r0 = rs[0]
        dump = dumps.get(r0["cache"], {}) if r0["targets"] == "cached" else {}
        # a cached row pays, once, the dump up to its views (for the grown cache: the time to reach V)
        dump_s = dump.get("seconds_at", {}).get(str(r0["views"]), 0.0)
        forwards = r0["teacher_forwards"] + (dump["num_samples"] * r0["views"] if dump else 0)
        out.append({"row": name, "student": r0["student"], "targets": r0["targets"], "distill": r0["distill"],
                    "views": r0["views"], "seeds": len(rs), "top1": mean, "top1_std": std,
                    "top5": sum(r["top5"] for r in rs) / len(rs), "teacher_forwards": forwards,
                    "run_seconds": run_s,
                    **{f"cost_{n}": dump_s + n * run_s for n in (1, 5, 20)}})
    return sorted(out, key=lambda t: t["row"])


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'row':<44} {'seeds':>5} {'top-1':>14} {'top-5':>7} {'teacher fwd':>11} {COST_HEAD}"
    lines = [head, "-" * len(head)]
    for t in rows:
        lines.append(f"{t['row']:<44} {t['seeds']:>5} {accuracy_text(t['top1'], t['top1_std']):>14} "
                     f"{t['top5']:>7.2f} {t['teacher_forwards']:>11,} "
                     + cost_text(t["run_seconds"], [t["cost_1"], t["cost_5"], t["cost_20"]]))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], outdir: str, student: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    os.makedirs(outdir, exist_ok=True)
    mine = [t for t in rows if t["student"] == student]
    ref = {t["targets"] + "-" + t["distill"]: t for t in mine if t["targets"] in ("online", "scratch")}
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for distill, color in (("soft", "C0"), ("hard", "C2")):  # each sweep against its online reference
        sweep = sorted((t for t in mine if t["row"].split("/")[1].startswith(f"cached-{distill}-V")),
                       key=lambda t: t["views"])
        if sweep:
            ax.plot([t["views"] for t in sweep], [t["top1"] for t in sweep], "o-", color=color,
                    label=f"cached {distill} KD")
        if f"online-{distill}" in ref:
            ax.axhline(ref[f"online-{distill}"]["top1"], linestyle="--", color=color, label=f"online {distill} KD")
    if "scratch-none" in ref:
        ax.axhline(ref["scratch-none"]["top1"], linestyle=":", color="gray", label="scratch")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cached views per image (V)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"CIFAR-10, {student}: accuracy vs cached views")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "cifar10_views.png"), dpi=110)

    fig = Figure(figsize=(11, 4))
    by_forwards, by_seconds = fig.subplots(1, 2, sharey=True)
    for t in mine:
        if t["targets"] == "scratch":
            continue
        # N = 1, 5, 20 student runs: a cache pays its dump once, online pays the teacher in every run. Teacher
        # forward passes are machine-independent; seconds are the table's (dump + N runs of epochs x fastest epoch)
        xs = [t["teacher_forwards"] * (n if t["targets"] == "online" else 1) for n in (1, 5, 20)]
        by_forwards.plot(xs, [t["top1"]] * 3, "o-", alpha=0.8, label=t["row"].split("/")[1])
        by_seconds.plot([t[f"cost_{n}"] / 60 for n in (1, 5, 20)], [t["top1"]] * 3, "o-", alpha=0.8)
    by_forwards.set_xscale("log")
    by_forwards.set_xlabel("teacher forward passes for N = 1, 5, 20 student runs (incl. the dump)")
    by_forwards.set_ylabel("test top-1 (%)")
    by_forwards.legend(fontsize=7)
    by_seconds.set_xscale("log")
    by_seconds.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    by_seconds.xaxis.set_major_formatter(ScalarFormatter())
    by_seconds.xaxis.set_minor_formatter(NullFormatter())
    by_seconds.set_xlabel("minutes on 2 CPU cores for N = 1, 5, 20 student runs (incl. the dump)")
    fig.suptitle(f"CIFAR-10, {student}: accuracy vs cost")
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "cifar10_cost.png"), dpi=110)


def plot_students(rows: list[dict[str, Any]], path: str) -> None:
    """Scratch, online and cached V = 8 side by side for every student, each in its own distillation (hard KD for
    a distillation-token DeiT, soft for the others): the mean, the seeds' std as error bars."""
    from matplotlib.figure import Figure

    students = sorted({t["row"].split("/")[0] for t in rows})  # a row's tag (the DeiT-mini is deit_tiny resized)
    kinds = (("scratch", "scratch"), ("online-{d}", "online"), ("cached-{d}-V8", "cached V = 8"))
    row = {tuple(t["row"].split("/")[:2]): t for t in rows}
    fig = Figure(figsize=(2.2 + 1.6 * len(students), 4))
    ax = fig.add_subplot()
    width = 0.26
    for k, (kind, label) in enumerate(kinds):
        found = [(i, row.get((st, kind.format(d="hard" if "distilled" in st else "soft"))))
                 for i, st in enumerate(students)]
        found = [(i, t) for i, t in found if t is not None]
        bars = ax.bar([i + (k - 1) * width for i, _ in found], [t["top1"] for _, t in found], width,
                      yerr=[t["top1_std"] or 0.0 for _, t in found], capsize=3, label=label, color=f"C{k}")
        ax.bar_label(bars, [f"{t['top1']:.1f}\n({t['seeds']} s.)" for _, t in found], fontsize=6, padding=2)
    ax.set_xticks(range(len(students)), [s.replace("_", "_\n", 1) for s in students], fontsize=7)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"CIFAR-10: {os.path.splitext(os.path.basename(path))[0].removesuffix('_students')}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    run(main)
