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


def teacher_spec(args: argparse.Namespace):
    """The teacher the arguments name: --weights, or a seeded random initialisation with --random-init."""
    from kdcache.engine import TeacherSpec

    if args.random_init:
        return TeacherSpec(name=args.teacher, random_init=True, init_seed=args.init_seed)
    return TeacherSpec(name=args.teacher, weights=args.weights)


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
