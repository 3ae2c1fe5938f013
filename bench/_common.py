"""What the benchmark scripts share: the offline teacher/data defaults and the JSON result file."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


def add_teacher_args(ap: argparse.ArgumentParser, *, student: bool = True) -> None:
    """--data/--teacher/--weights (the shared CIFAR-10 file and public ResNet-56) and --student."""
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--teacher", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "weights" / "resnet56-4bfd9763.th"))
    if student:
        ap.add_argument("--student", default="cifar_resnet20")


def write_json(path: str, args: argparse.Namespace, **payload: Any) -> None:
    """Results with the arguments and the machine they were measured on."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    with open(path, "w") as f:
        json.dump({"args": vars(args), "machine": machine, **payload}, f, indent=2)
    print(f"wrote {path}")
