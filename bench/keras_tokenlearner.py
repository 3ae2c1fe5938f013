"""The full-data protocol of the Keras TokenLearner example, row by row, resumable (issue 28).

keras.io/examples/vision/token_learner trains a mini-ViT on CIFAR-10 and publishes top-1 as the mean of
5 runs: 56.55% with a TokenLearner of 8 tokens, 56.50% with 4, 56.11% / 56.37% without. Its protocol, as
kdcache runs it (one loop; rows differ only in their targets):

* data: the shared CIFAR-10 (JPEG-compressed, see ../shared/data/README.md); the training split divided
  by ``--val-fraction 0.2`` into 40,000 training and 10,000 validation images, stratified by class (the
  HDF5 file is ordered by class, so the example's "last 10,000" would be two classes); the 10,000 test
  images evaluated once, on the checkpoint with the best validation top-1;
* views: rescale to [0, 1], resize 32 -> 52 (bilinear), a random 48 crop, a horizontal flip
  (``--crop pad --padding 0 --crop-resize 52 --size 48 --mean 0 0 0 --std 1 1 1``); evaluation resizes
  32 -> 48 (Keras's RandomCrop at inference resizes its 52 px input to 48);
* model: ``keras_tokenlearner_vit`` (8 tokens) or ``keras_vit`` (kdcache/models/_keras_vit.py);
* training: AdamW, lr 1e-3 constant (no warm-up), batch 256, 20 epochs, cross-entropy. The example used
  TF-Addons' AdamW (2021), whose decay is ``w -= wd * w`` per step without the learning rate and on every
  variable: weight decay 1e-4 there is torch's decoupled ``weight_decay`` 0.1 (1e-4 / lr) with
  ``--decay-rule all``.

Rows (``--only`` picks them by substring), the same loop and schedule, only the targets differ:

* ``STUDENT/scratch/sS``: labels only, a fresh view per sample and epoch (the example's own training);
* ``STUDENT/cached-soft-V8/sS``, ``STUDENT/cached-hard-V8/sS``: from a cache of ``--teacher`` over V views
  of the 40,000 training images with exactly these views (dumped once by the first cached row, into
  ``--workdir``; rerunning resumes the dump too); soft: KL at T = ``--temperature`` weighted ``--alpha``;
* ``STUDENT/online-soft/sS``: the online reference, the teacher run at every step on a fresh view;
* ``STUDENT/scratch-jpeg2-qQ/sS``: the scratch row on a second JPEG generation of ``--data`` (every image of
  every split compressed once more at quality Q = ``--jpeg-quality``, 4:2:0, by Pillow, which decoded the
  first, on a block grid shifted by ``JPEG_SHIFT`` px; made once into ``--workdir``, its PSNR against the
  first generation written to ``--results``): what one more compression costs this protocol.

A distilled row run with another ``--alpha`` or ``--temperature`` than the protocol's (0.7, 4) is another row:
its kind carries the change (``cached-soft-V8-T1``), so it never stands in for the protocol's row.

The teacher sees the views normalised with its own mean and std (the cache's view spec); the student
undoes that normalisation first (``input_mean``/``input_std``), so its layers see [0, 1] as in the example
and as in the scratch rows.

Every row's run directory lives under ``--workdir`` (by default ``~/.cache/kdcache-bench/keras_tokenlearner``,
outside the checkout, which a new session lays anew); rerunning the same command resumes an interrupted row from
its last epoch (``--resume``) and skips finished ones, whose JSON sits in ``--results`` (one file per row, with the
commit, machine and exact command; commit it at once). A session may also get a new machine, with nothing of
``--workdir`` left: ``--save-state`` copies every unfinished row's resume files (checkpoints, metrics, config) into
``--state`` in the checkout, to commit before a session ends, and a row whose run directory holds fewer epochs than
its saved state starts from that state.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import shutil
import sys
import time

import torch
from _common import COST_HEAD, SHARED, accuracy_text, cost_text, git_commit, machine, run

STUDENTS = ("keras_tokenlearner_vit", "keras_vit")
DEFAULT_ALPHA, DEFAULT_TEMPERATURE = 0.7, 4.0  # the distilled rows' loss (bench/cifar10.py's)
KERAS_VIEW = {"size": 48, "crop": "pad", "padding": 0, "crop_resize": 52, "mean": (0.0, 0.0, 0.0),
              "std": (1.0, 1.0, 1.0), "interpolation": "bilinear", "flip_prob": 0.5}


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--students", nargs="+", default=[STUDENTS[0]], help="keras_tokenlearner_vit and/or keras_vit")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="run the rows whose id contains one of these")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="a stratified subset of the training part (smoke tests)")
    ap.add_argument("--student-arg", action="append", default=[], help="KEY=VALUE for a tiny student (smoke tests)")
    ap.add_argument("--size", type=int, default=48, help="view size (48; smaller only in smoke tests)")
    ap.add_argument("--crop-resize", type=int, default=52)
    ap.add_argument("--rows", nargs="+", default=["scratch"],
                    help="row kinds: scratch, cached-soft, cached-hard, online-soft, scratch-jpeg2")
    ap.add_argument("--jpeg-quality", type=int, default=75,
                    help="scratch-jpeg2: the second generation's JPEG quality (the first was about 75, 4:2:0)")
    ap.add_argument("--teacher", default="cifar_resnet56")
    ap.add_argument("--teacher-weights", default="bench/teachers/cifar_resnet56_ft50k.pt")
    ap.add_argument("--views", type=int, default=8, help="cached views per image (20 epochs: 2.5 replays each)")
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                    help="the KD weight (another value than the default names the row: ...-a0.9)")
    ap.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                    help="soft KD's temperature (another value than the default names the row: ...-T1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    ap.add_argument("--workdir", default=os.path.expanduser("~/.cache/kdcache-bench/keras_tokenlearner"),
                    help="run directories and the teacher cache: outside the checkout, which a new session lays "
                         "anew, on the machine, which the next session gets back as it was")
    ap.add_argument("--results", default="bench/results/keras_tokenlearner",
                    help="one JSON file per finished row")
    ap.add_argument("--state", default="bench/state/keras_tokenlearner",
                    help="unfinished rows' resume files, in the checkout (to commit): a row starts from here when "
                         "its run directory under --workdir holds fewer epochs (a new machine)")
    ap.add_argument("--save-state", action="store_true",
                    help="instead of rows: copy every unfinished row's resume files from --workdir into --state "
                         "(and drop the state of finished rows), to commit before a session ends")
    ap.add_argument("--time-dump", action="store_true",
                    help="instead of rows: time one whole dump of the cached rows' cache (--views views of the "
                         "training part), from nothing and in one call, into a scratch store under --workdir that "
                         "is removed after; writes dump_timing_<teacher>_V<views>.json to --results")
    ap.add_argument("--table", action="store_true",
                    help="instead of rows: print the table of every row finished in --results (mean ± std over "
                         "seeds, gain over scratch, teacher forwards, training time at the fastest epoch, cost of "
                         "N = 1, 5, 20 runs) and write it to --results/table.json")
    return ap.parse_args(argv)


KINDS = ("scratch", "cached-soft", "cached-hard", "online-soft", "scratch-jpeg2")


def rows(args: argparse.Namespace) -> list[str]:
    bad = sorted(set(args.rows) - set(KINDS))
    if bad:
        raise SystemExit(f"error: unknown --rows {bad}; choose from {', '.join(KINDS)}")
    kinds = [f"{k}-V{args.views}" if k.startswith("cached") else f"{k}-q{args.jpeg_quality}" if k.endswith("jpeg2")
             else k for k in KINDS if k in args.rows]
    # a distilled row with another alpha or temperature than the protocol's is another row, never the same file
    variant = (f"-a{args.alpha:g}" if args.alpha != DEFAULT_ALPHA else "") + \
        (f"-T{args.temperature:g}" if args.temperature != DEFAULT_TEMPERATURE else "")
    kinds = [k + variant if not k.startswith("scratch") else k for k in kinds]
    ids = [f"{s}/{k}/s{seed}" for k in kinds for s in args.students for seed in args.seeds]
    return [r for r in ids if not args.only or any(o in r for o in args.only)]


def _view(args: argparse.Namespace, teacher: bool) -> dict:
    """The Keras views; the teacher's (cached and online rows) normalised with the teacher's own mean and std."""
    view = {**KERAS_VIEW, "size": args.size, "crop_resize": args.crop_resize}
    if teacher:
        del view["mean"], view["std"]
    return view


def _dump_config(args: argparse.Namespace, data, out: str):
    from _common import teacher_spec

    from kdcache.engine import DumpConfig

    return DumpConfig(data=data, out=out, teacher=teacher_spec(_teacher_args(args)), views=args.views,
                      view=_view(args, teacher=True), workers=args.workers, seed=0)


def dump_cache(args: argparse.Namespace, data) -> str:
    """The teacher's cache over the training part's views (resumed, or found finished, by a rerun)."""
    from kdcache.engine import dump_teacher

    out = os.path.join(args.workdir, f"{args.teacher}_V{args.views}.zarr")
    record = os.path.join(args.results, f"dump_{args.teacher}_V{args.views}.json")
    t0 = time.perf_counter()
    s = dump_teacher(_dump_config(args, data, out), progress=False, log=lambda m: print(m, flush=True))
    done = json.load(open(record)) if os.path.exists(record) else {}
    if s.num_views and not done.get("complete"):
        # a dump killed with its session and resumed in the next has no total wall time: only the completing
        # call's is known; the dump's cost in time is what --time-dump measures
        done.update(seconds_of_the_completing_call=time.perf_counter() - t0, views=s.num_views,
                    samples=s.num_samples, teacher_forwards=s.num_views * s.num_samples, complete=True)
        with open(record, "w") as f:
            json.dump(done, f, indent=2)
    return out


def time_dump(args: argparse.Namespace) -> dict:
    """One whole dump of the cached rows' cache, timed: from nothing, in one call (a killed timing starts over),
    into a scratch store that is removed after. Its wall time, teacher loading included, is the cached rows' one
    cost beyond training."""
    import shutil

    from kdcache.data import DataConfig
    from kdcache.engine import dump_teacher

    out = os.path.join(args.workdir, f"timing_{args.teacher}_V{args.views}.zarr")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = dump_teacher(_dump_config(args, DataConfig(source=args.data, val_fraction=0.2, limit=args.limit), out),
                     progress=False, log=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"teacher": args.teacher, "teacher_weights": args.teacher_weights, "views": s.num_views,
            "samples": s.num_samples, "teacher_forwards": s.views_computed, "seconds": seconds,
            "compute_seconds": s.seconds, "views_per_second": s.images_per_second}


# Re-encoded on the grid the first generation used, at its quality, JPEG is nearly idempotent: on the shared
# CIFAR-10 it changes 7.7% of the pixels, mostly by 1 (PSNR 50.8 dB; measured 2026-12-07 with no shift). Shifted
# by half a block (edge rows and columns added above and left, removed after decoding), the 8x8 blocks cut the
# image where the first generation's did not and the compression is a fresh one: PSNR 32.2 dB, 91% of the pixels
# changed, by 4.6 levels on average (all 60,000 images), the loss a quality-75 compression of 32-px images brings.
JPEG_SHIFT = 4


def second_generation(args: argparse.Namespace) -> str:
    """``--data`` (an ``hdf5:`` file) with every image of every split through JPEG once more, at
    ``--jpeg-quality`` with 4:2:0 chroma (the first generation's settings) on a grid shifted by ``JPEG_SHIFT``,
    encoded and decoded by Pillow as the first was; written once into ``--workdir`` (atomically: a killed run
    leaves no half file), with its PSNR against the first generation in ``--results``. Returns the new
    ``hdf5:`` source."""
    import h5py
    import numpy as np
    from PIL import Image

    if not args.data.startswith("hdf5:"):
        raise SystemExit(f"error: scratch-jpeg2 re-encodes an hdf5: --data file, not {args.data!r}")
    src = args.data.split(":", 1)[1]
    q = args.jpeg_quality
    dst = os.path.join(args.workdir, f"{os.path.splitext(os.path.basename(src))[0]}_jpeg2_q{q}_shift{JPEG_SHIFT}.h5")
    record = os.path.join(args.results, f"jpeg2_q{q}.json")
    if os.path.exists(dst) and os.path.exists(record):
        return f"hdf5:{dst}"
    os.makedirs(args.workdir, exist_ok=True)
    splits: dict[str, dict] = {}
    with h5py.File(src, "r") as f, h5py.File(dst + ".partial", "w") as g:
        g.attrs.update(dict(f.attrs))
        for split in [k for k in f if isinstance(f[k], h5py.Group) and "images" in f[k]]:
            for name, ds in f[split].items():
                if name != "images":
                    g[f"{split}/{name}"] = ds[()]
            g[split].attrs.update({k: v for k, v in f[split].attrs.items() if k != "images_sha256"})
            first = f[split]["images"][()]
            second = np.empty_like(first)
            for i, im in enumerate(first):
                buf = io.BytesIO()
                shifted = np.pad(im, ((JPEG_SHIFT, 0), (JPEG_SHIFT, 0), (0, 0)), mode="edge")
                Image.fromarray(shifted).save(buf, "JPEG", quality=q, subsampling=2)  # 2: 4:2:0
                second[i] = np.asarray(Image.open(buf).convert("RGB"))[JPEG_SHIFT:, JPEG_SHIFT:]
            g.create_dataset(f"{split}/images", data=second, chunks=(min(256, len(second)),) + second.shape[1:],
                             compression="gzip", compression_opts=4)
            diff = second.astype(np.float64) - first
            mse = float(np.mean(diff ** 2))
            splits[split] = {"images": len(first), "psnr_db": 10 * math.log10(255 ** 2 / mse) if mse else None,
                             "mean_abs_diff": float(np.mean(np.abs(diff))),
                             "pixels_changed": float(np.mean(diff != 0))}
            print(f"second JPEG generation of {split}: {len(first)} images, PSNR {splits[split]['psnr_db']:.2f} dB "
                  "against the first", flush=True)
    os.replace(dst + ".partial", dst)
    os.makedirs(args.results, exist_ok=True)
    with open(record, "w") as fh:
        json.dump({"source": src, "second_generation": dst, "quality": q, "subsampling": "4:2:0",
                   "grid_shift_px": JPEG_SHIFT, "encoder": f"Pillow {Image.__version__}", "splits": splits}, fh,
                  indent=2)
    return f"hdf5:{dst}"


def _teacher_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(teacher=args.teacher, weights=args.teacher_weights, random_init=False, init_seed=0)


def run_row(row: str, args: argparse.Namespace) -> dict:
    from _common import teacher_spec

    from kdcache._utils import parse_model_args
    from kdcache.augment import ViewSpec
    from kdcache.cache import CacheStore
    from kdcache.data import DataConfig
    from kdcache.train import LossConfig, TrainConfig, train_student, train_teacher

    student, kind, seed = row.split("/")
    out = os.path.join(args.workdir, row.replace("/", "__"))
    restore_state(args, row)
    source = second_generation(args) if kind.endswith(f"jpeg2-q{args.jpeg_quality}") else args.data
    data = DataConfig(source=source, val_fraction=0.2, limit=args.limit)
    kwargs = parse_model_args(args.student_arg)
    distill = "none" if kind.startswith("scratch") else ("hard" if "hard" in kind else "soft")
    common = dict(data=data, out=out, model=student, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                  sched="constant", warmup_epochs=0.0, weight_decay=0.1, decay_rule="all", seed=int(seed[1:]),
                  workers=args.workers, resume=os.path.exists(os.path.join(out, "last.pt")),
                  loss=LossConfig(distill=distill, alpha=args.alpha, temperature=args.temperature))
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    if kind.startswith("scratch"):
        result = train_teacher(TrainConfig(model_kwargs=kwargs, view=_view(args, teacher=False), **common),
                               progress=False, log=log)
    elif kind.startswith("cached"):
        cache = dump_cache(args, data)
        spec = ViewSpec.from_dict(CacheStore.open(cache, mode="r").identity.view_spec)
        kwargs.update(input_mean=list(spec.mean), input_std=list(spec.std))  # back to [0, 1] inside the student
        result = train_student(TrainConfig(model_kwargs=kwargs, cache=cache, **common), progress=False, log=log)
    else:  # online-soft: the teacher on a fresh view per sample and epoch, from the same view options
        from kdcache._teacher import build_teacher
        from kdcache._views import resolve_view_spec

        view, teacher = _view(args, teacher=True), teacher_spec(_teacher_args(args))
        spec = resolve_view_spec(build_teacher(teacher, num_classes=data.open().num_classes).cfg, view)  # as train_student does
        kwargs.update(input_mean=list(spec.mean), input_std=list(spec.std))
        result = train_student(TrainConfig(model_kwargs=kwargs, teacher=teacher, view=view, **common),
                               progress=False, log=log)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs = [json.loads(line) for line in f]
    seconds = [e["train/epoch_seconds"] for e in epochs]
    return {"row": row, "student": student, "targets": kind, "seed": int(seed[1:]), "test": result["test"],
            "best_val_top1": result["best_top1"], "epochs": len(epochs), "epoch_seconds": seconds,
            "fastest_epoch_seconds": min(seconds), "wall_seconds_this_session": time.perf_counter() - t0,
            "val_top1_by_epoch": [e.get("val/top1") for e in epochs], **fit_by_epoch(epochs)}


def fit_by_epoch(epochs: list[dict]) -> dict:
    """How well the student fits, per epoch, from its metrics: the mean training loss on labels (train mode, on
    the training views) against the validation loss, and how often its argmax agrees with the teacher's."""
    return {"train_task_loss_by_epoch": [e.get("train/task_loss") for e in epochs],
            "val_loss_by_epoch": [e.get("val/loss") for e in epochs],
            "teacher_agreement_by_epoch": [e.get("train/teacher_agreement") for e in epochs]}


STATE_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json")  # what --resume reads (kdcache/train/_run.py)


def _epochs_done(run_dir: str) -> int:
    """How many epochs the ``last.pt`` of a run directory holds (0 where it has none)."""
    path = os.path.join(run_dir, "last.pt")
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1 if os.path.exists(path) else 0


def _written(run_dir: str) -> list[tuple[int, int, int]]:
    """When and what the run last wrote to its resume files (a checkpoint is replaced by a rename: new inode)."""
    return [(st.st_ino, st.st_size, st.st_mtime_ns) for st in (os.stat(os.path.join(run_dir, f)) for f in STATE_FILES)]


def _copy_run_state(src: str, dest: str) -> int:
    """Copy a run directory's resume files into a new ``dest``, consistent with each other: the same epoch end
    (a copy that overlapped the run writing its checkpoints is taken again), ``metrics.jsonl`` cut to the epochs
    of ``last.pt``, ``best.pt`` without its optimiser state. Returns the epochs copied."""
    for _ in range(5):
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        stats = _written(src)
        for f in STATE_FILES:
            shutil.copy2(os.path.join(src, f), os.path.join(dest, f))
        last = torch.load(os.path.join(dest, "last.pt"), map_location="cpu", weights_only=True)
        best = torch.load(os.path.join(dest, "best.pt"), map_location="cpu", weights_only=True)
        unchanged = stats == _written(src)
        if unchanged and best["epoch"] <= last["epoch"] and best["best_top1"] == last["best_top1"]:
            epochs = int(last["epoch"]) + 1
            # best.pt is only tested at the end (resume reads last.pt): its optimiser state is dead weight
            slim = {k: v for k, v in best.items() if k not in ("optimizer", "scheduler", "scaler")}
            torch.save(slim, os.path.join(dest, "best.pt"))
            with open(os.path.join(dest, "metrics.jsonl")) as f:
                lines = [line for line in f if json.loads(line)["epoch"] < epochs]
            with open(os.path.join(dest, "metrics.jsonl"), "w") as f:
                f.writelines(lines)
            return epochs
        time.sleep(2.0)  # the run was writing its epoch's files
    raise SystemExit(f"error: {src} kept changing while its state was copied; try again")


def save_state(args: argparse.Namespace) -> list[str]:
    """``--save-state``: every unfinished row's resume files from ``--workdir`` into ``--state`` (where they hold
    more epochs than the state already saved); the state of rows finished since is removed."""
    os.makedirs(args.state, exist_ok=True)
    lines = []
    for name in sorted(os.listdir(args.state)):
        if os.path.exists(_result_path(args, name.replace("__", "/"))):
            shutil.rmtree(os.path.join(args.state, name))
            lines.append(f"{name}: finished, its state removed")
    for name in sorted(os.listdir(args.workdir)) if os.path.isdir(args.workdir) else []:
        src, dest = os.path.join(args.workdir, name), os.path.join(args.state, name)
        if not os.path.exists(os.path.join(src, "last.pt")) or os.path.exists(_result_path(args, name.replace("__", "/"))):
            continue
        if _epochs_done(dest) >= _epochs_done(src):
            lines.append(f"{name}: state already holds {_epochs_done(dest)} epochs")
            continue
        epochs = _copy_run_state(src, dest + ".tmp")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(dest + ".tmp", dest)
        size = sum(os.path.getsize(os.path.join(dest, f)) for f in STATE_FILES)
        lines.append(f"{name}: saved {epochs} epochs ({size / 2**20:.1f} MiB) to {dest}")
    return lines


def restore_state(args: argparse.Namespace, row: str) -> None:
    """Start a row from its saved state where its run directory holds fewer epochs (a new machine)."""
    name = row.replace("/", "__")
    src, out = os.path.join(args.state, name), os.path.join(args.workdir, name)
    if _epochs_done(src) > _epochs_done(out):
        print(f"{row}: starting from the state saved in {src} ({_epochs_done(src)} epochs; the run directory held "
              f"{_epochs_done(out)})", flush=True)
        shutil.rmtree(out + ".tmp", ignore_errors=True)
        shutil.copytree(src, out + ".tmp")  # whole or not at all: a killed copy leaves no half run directory
        shutil.rmtree(out, ignore_errors=True)
        os.replace(out + ".tmp", out)


def _result_path(args: argparse.Namespace, row: str) -> str:
    return os.path.join(args.results, row.replace("/", "__") + ".json")


def _stamp(res: dict, command: str, commit: str) -> dict:
    return {**res, "commit": commit, "command": command, "date": time.strftime("%Y-%m-%d"), "machine": machine()}


def main() -> None:
    args = _args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.results, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    commit = git_commit()  # the code this process runs, whatever lands while it trains
    if args.table:
        rows_ = table(args)
        with open(os.path.join(args.results, "table.json"), "w") as f:
            json.dump(rows_, f, indent=2)
        print(format_summary(rows_))
        return
    if args.save_state:
        print("\n".join(save_state(args)) or "no unfinished row", flush=True)
        return
    if args.time_dump:
        path = os.path.join(args.results, f"dump_timing_{args.teacher}_V{args.views}.json")
        res = _stamp(time_dump(args), command, commit)  # before the file is opened: a killed timing writes nothing
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {path}", flush=True)
        return
    todo = rows(args)
    for row in todo:
        path = _result_path(args, row)
        if os.path.exists(path):
            print(f"== {row}: done ({path})", flush=True)
            continue
        print(f"== {row}", flush=True)
        res = run_row(row, args)
        with open(path, "w") as f:
            json.dump(_stamp(res, command, commit), f, indent=2)
        print(f"wrote {path}", flush=True)
    print(format_table([json.load(open(_result_path(args, r))) for r in todo if os.path.exists(_result_path(args, r))]))


def format_table(results: list[dict]) -> str:
    lines = [f"{'row':<40} {'test top-1':>10} {'best val':>9} {'epoch':>6} {'fastest epoch':>14}"]
    for r in results:
        lines.append(f"{r['row']:<40} {r['test']['top1']:>9.2f}% {r['best_val_top1']:>8.2f}% "
                     f"{r['test']['epoch']:>6} {r['fastest_epoch_seconds']:>13.1f}s")
    return "\n".join(lines)


def table(args: argparse.Namespace) -> list[dict]:
    """One line per student and targets over the rows finished in ``--results``: test top-1 per seed, mean and
    sample std, the mean gain over the scratch row of the same seeds; teacher forwards (the cache's once, an online
    row's each run); a run's training time as its epochs times its fastest epoch (the cost on a quiet machine, as
    bench/cifar10.py counts it; mean over seeds); the cost of N = 1, 5, 20 runs: the timed dump once
    (``--time-dump``; None until timed) plus N runs."""
    import glob
    import statistics

    results = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(args.results, "*__*__s*.json")))]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["student"], r["targets"]), []).append(r)
    scratch = {(r["student"], r["seed"]): r["test"]["top1"] for r in results if r["targets"] == "scratch"}
    out = []
    def order(key: tuple[str, str]) -> tuple:
        return key[0], [i for i, k in enumerate(KINDS) if key[1].startswith(k)][-1], key[1]

    for (student, targets), rs in sorted(groups.items(), key=lambda kv: order(kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        top1 = [r["test"]["top1"] for r in rs]
        gains = [r["test"]["top1"] - scratch[(student, r["seed"])] for r in rs if (student, r["seed"]) in scratch]
        run_s = statistics.mean(r["epochs"] * r["fastest_epoch_seconds"] for r in rs)
        once, per_run, dump_s = 0, 0, 0.0
        if targets.startswith("cached"):
            views = int(re.search(r"-V(\d+)", targets).group(1))
            dump = _read(os.path.join(args.results, f"dump_{args.teacher}_V{views}.json"))
            timing = _read(os.path.join(args.results, f"dump_timing_{args.teacher}_V{views}.json"))
            once = dump.get("teacher_forwards", 0)
            dump_s = timing["seconds"] if timing.get("teacher_forwards") == once and once else None
        elif targets.startswith("online"):
            # the teacher's forward on every training view of every epoch: the cache's training part
            samples = _read(os.path.join(args.results, f"dump_{args.teacher}_V{args.views}.json")).get("samples")
            per_run = rs[0]["epochs"] * samples if samples else None
        out.append({"student": student, "targets": targets, "seeds": [r["seed"] for r in rs], "top1": top1,
                    "top1_mean": statistics.mean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
                    "gain_over_scratch": statistics.mean(gains) if gains and targets != "scratch" else None,
                    "teacher_forwards_once": once, "teacher_forwards_per_run": per_run, "run_seconds": run_s,
                    **{f"cost_{n}_seconds": None if dump_s is None else dump_s + n * run_s for n in (1, 5, 20)}})
    return out


def _read(path: str) -> dict:
    return json.load(open(path)) if os.path.exists(path) else {}


def format_summary(rows_: list[dict]) -> str:
    def num(x, fmt: str = ",.0f") -> str:
        return "-" if x is None else format(x, fmt)

    head = f"{'student / targets':<44} {'seeds':>5} {'top-1':>14} {'gain':>6} {'fwd once':>9} {'fwd/run':>9} {COST_HEAD}"
    lines = [head, "-" * len(head)]
    for t in rows_:
        lines.append(f"{t['student'] + ' / ' + t['targets']:<44} {len(t['seeds']):>5} "
                     f"{accuracy_text(t['top1_mean'], t['top1_std']):>14} {num(t['gain_over_scratch'], '+.2f'):>6} "
                     f"{num(t['teacher_forwards_once']):>9} {num(t['teacher_forwards_per_run']):>9} "
                     + cost_text(t["run_seconds"], [t[f"cost_{n}_seconds"] for n in (1, 5, 20)]))
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
