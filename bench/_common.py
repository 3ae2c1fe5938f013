"""What the benchmark scripts share: the offline teacher/data defaults, alternating rounds, the JSON result file
(with the commit and machine it was measured on)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def add_teacher_args(ap: argparse.ArgumentParser, *, student: bool = True) -> None:
    """--data/--teacher/--weights (the shared CIFAR-10 file and public ResNet-56) and --student."""
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--teacher", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "weights" / "resnet56-4bfd9763.th"))
    ap.add_argument("--random-init", action="store_true",
                    help="an untrained teacher seeded by --init-seed instead of --weights (speed runs only)")
    ap.add_argument("--init-seed", type=int, default=0)
    if student:
        ap.add_argument("--student", default="cifar_resnet20")


def add_main_protocol_args(ap: argparse.ArgumentParser, *, workdir: str, json_path: str) -> None:
    """The main protocol of ``bench/cifar10.py`` (2,000 training images, 8 cached views of resized-crop 0.6-1 and
    flip at 32 px, the ResNet-20 student for 20 epochs) and a run's folders, for scripts that share its cache."""
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--weights", default="bench/teachers/cifar_resnet56_ft50k.pt", help="the main teacher")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=None, help="a stratified test subset (smoke runs)")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--student", default="cifar_resnet20")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=os.path.expanduser(workdir))
    ap.add_argument("--json", default=json_path)


def main_protocol_cache(args: argparse.Namespace):
    """(cache path, train data, test data, main teacher, the dump's summary) of the main protocol's cache in
    ``args.workdir`` (dumped, or resumed, here: every script with these arguments shares it)."""
    from kdcache.data import DataConfig
    from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher

    train = DataConfig(source=args.data, limit=args.limit)
    test = DataConfig(source=args.data, split="test", limit=args.test_limit)
    spec = TeacherSpec(name="cifar_resnet56", weights=args.weights)
    cache = os.path.join(args.workdir, f"main_V{args.views}.zarr")
    os.makedirs(args.workdir, exist_ok=True)
    s = dump_teacher(DumpConfig(data=train, out=cache, teacher=spec, views=args.views, seed=0,
                                view={"scale": (0.6, 1.0)}, batch_size=args.batch_size, workers=args.workers),
                     progress=False, log=print)
    return cache, train, test, spec, s


def main_protocol_student(args: argparse.Namespace, cache: str, train, out: str, seed: int, loss):
    """The main protocol's student run (AdamW 3e-3, batch 128, no validation split; ``last.pt`` is scored)."""
    from kdcache.train import TrainConfig

    return TrainConfig(data=train, out=out, model=args.student, cache=cache, epochs=args.epochs, batch_size=128,
                       lr=3e-3, seed=seed, workers=args.workers, val_split=None, test_split=None,
                       resume=os.path.exists(os.path.join(out, "last.pt")), loss=loss)


def load_results(path: str, keys) -> dict[str, Any]:
    """The parts ``keys`` of a resumable script's JSON (``rows`` always, empty at first)."""
    done = json.load(open(path)) if os.path.exists(path) else {}
    out = {k: done[k] for k in keys if k in done}
    out.setdefault("rows", {})
    return out


def teacher_spec(args: argparse.Namespace):
    """The teacher the arguments name: --weights, or a seeded random initialisation with --random-init."""
    from kdcache.engine import TeacherSpec

    if args.random_init:
        return TeacherSpec(name=args.teacher, random_init=True, init_seed=args.init_seed)
    return TeacherSpec(name=args.teacher, weights=args.weights)


COST_HEAD = f"{'run s':>7} {'N=1 s':>7} {'N=5 s':>7} {'N=20 s':>8}"  # a table's cost columns


def accuracy_text(mean: float, std: float | None) -> str:
    """``mean ± std`` over seeds, or the mean alone for one seed."""
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def cost_text(run_s: float, costs: list[float | None]) -> str:
    """A run's seconds and the cost of N = 1, 5, 20 runs under :data:`COST_HEAD` (``-`` where not known)."""
    return " ".join([f"{run_s:>7.0f}", *(f"{'-' if c is None else format(c, ',.0f'):>{w}}"
                                          for c, w in zip(costs, (7, 7, 8)))])


def git_commit() -> str:
    """The checkout's commit (short), or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def alternate(modes: dict[str, Callable[[int], float]], rounds: int, label: str = "") -> dict[str, list[float]]:
    """Each mode's rate (``fn(round) -> per second``) over ``rounds`` alternating rounds: a b c a b c ..."""
    out: dict[str, list[float]] = {k: [] for k in modes}
    for r in range(rounds):
        for name, fn in modes.items():
            rate = fn(r)
            out[name].append(rate)
            print(f"{label + ' ' if label else ''}round {r + 1}/{rounds}  {name:<17} {rate:10.1f} /s", flush=True)
    return out


def write_json(path: str, args: argparse.Namespace, **payload: Any) -> None:
    """Results with the arguments, the commit and the machine they were measured on."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"args": vars(args), "commit": git_commit(), "machine": machine(), **payload}, f, indent=2)
    print(f"wrote {path}")


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``: a library error (bad data, a busy or damaged cache, ...) ends it with
    kdcache's one-line message and exit code 1, as the CLI does, never a traceback."""
    from kdcache._runtime import unwrap_worker_error
    from kdcache.errors import KdcacheError

    try:
        main()
    except KdcacheError as e:
        raise SystemExit(f"error: {unwrap_worker_error(e)}") from None
