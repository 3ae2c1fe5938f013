"""The offline quickstart: teacher → cache → scratch student vs distilled student, on digits.

Everything the real workflow does, small enough for a laptop CPU: train a teacher on
scikit-learn's bundled digits, dump it over several augmented views, then train the same
small student twice from the cache's replayed views — from labels only, and distilled —
and compare test accuracy. No checkpoint is selected on the test split: each run keeps its last
epoch and evaluates it once on the test split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import ConfigError
from kdcache.train import LossConfig, TrainConfig, evaluate_checkpoint, train_student, train_teacher

__all__ = ["QuickstartConfig", "run_quickstart", "format_table"]


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = "kdcache-quickstart"
    data: str = "digits"
    teacher: str = "cnn_small"
    student: str = "cnn_tiny"
    teacher_epochs: int = 15
    student_epochs: int = 15
    views: int = 8
    size: int = 16
    workers: int = 1
    seed: int = 0
    device: str = "auto"
    limit: int | None = None


def run_quickstart(cfg: QuickstartConfig, *, progress: bool = True, log: Callable[[str], None] = print
                   ) -> dict[str, Any]:
    try:
        os.makedirs(cfg.out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {cfg.out}: {e.strerror or e}; choose another `out`") from e
    train = DataConfig(source=cfg.data, split="train", limit=cfg.limit)
    test = replace(train, split="test", limit=None)
    # the quickstart owns its directory; no validation split, so best.pt is the last epoch; test once, below
    common = dict(data=train, batch_size=64, workers=cfg.workers, device=cfg.device, seed=cfg.seed,
                  warmup_epochs=1.0, weight_decay=0.05, overwrite=True, val_split=None, test_split=None)
    rows: list[dict[str, Any]] = []

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        log(f"== {stage}")
        t0 = time.perf_counter()
        result = fn()
        rows.append({"stage": stage, "seconds": time.perf_counter() - t0})
        return result

    teacher_dir = os.path.join(cfg.out, "teacher")
    timed("train teacher", lambda: train_teacher(TrainConfig(
        out=teacher_dir, model=cfg.teacher, epochs=cfg.teacher_epochs, lr=2e-3, view={"size": cfg.size},
        loss=LossConfig(distill="none"), **common), progress=progress, log=log))
    cache = os.path.join(cfg.out, "teacher.zarr")
    summary = timed("dump teacher", lambda: dump_teacher(DumpConfig(
        data=train, out=cache, teacher=TeacherSpec(weights=os.path.join(teacher_dir, "best.pt")),
        views=cfg.views, seed=cfg.seed, view={"size": cfg.size}, workers=cfg.workers, device=cfg.device,
        block_size=512), progress=progress, log=log))
    students = {}
    for stage, distill in (("student from scratch", "none"), ("student distilled", "soft")):
        run_dir = os.path.join(cfg.out, "scratch" if distill == "none" else "distilled")
        student_cfg = TrainConfig(out=run_dir, model=cfg.student, cache=cache, epochs=cfg.student_epochs, lr=3e-3,
                                  loss=LossConfig(distill=distill, alpha=0.7, temperature=4.0), **common)
        timed(stage, lambda c=student_cfg: train_student(c, progress=progress, log=log))
        students[stage] = os.path.join(run_dir, "last.pt")
    ckpts = {"teacher": os.path.join(teacher_dir, "best.pt"), **students}
    accuracy = {name: evaluate_checkpoint(path, test, workers=cfg.workers, device=cfg.device)
                for name, path in ckpts.items()}
    return {"out": cfg.out, "cache": cache, "stages": rows, "accuracy": accuracy, "dump": summary.to_dict()}


def format_table(result: dict[str, Any]) -> str:
    acc = result["accuracy"]
    secs = {r["stage"]: r["seconds"] for r in result["stages"]}
    lines = [f"{'model':<22} {'test top-1':>10} {'stage':<22} {'wall time':>9}"]
    stage_of = {"teacher": "train teacher", "student from scratch": "student from scratch",
                "student distilled": "student distilled"}
    for name, stats in acc.items():
        st = stage_of[name]
        lines.append(f"{name:<22} {stats['top1']:>9.2f}% {st:<22} {secs[st]:>8.1f}s")
    lines.append(f"{'(cache)':<22} {'':>10} {'dump teacher':<22} {secs['dump teacher']:>8.1f}s")
    return "\n".join(lines)
