"""Comparing training runs from their ``metrics.jsonl``: a summary per run and train/val curves.

A run directory (``train-student``, ``train-teacher``) holds one JSON line per epoch, written by
:class:`kdcache.train._logging.MetricsLogger`: ``epoch``, ``train/*`` (loss parts, images/s,
``seconds``, ``epoch_seconds``, ``teacher_agreement`` when distilling) and ``val/*`` (top1, top5,
loss). A resumed or rerun run appends; the last line written for an epoch wins. Plotting needs
matplotlib (the ``plot`` extra) and uses its Agg renderer without touching pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdcache._utils import optional_import
from kdcache.errors import RunError, RunNotFoundError

__all__ = ["read_metrics", "summarize_run", "summary_table", "plot_runs"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's per-epoch rows, in epoch order (one row per epoch)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        what = "does not exist" if not Path(run_dir).exists() else f"has no {METRICS_FILE}"
        raise RunNotFoundError(f"{run_dir} {what}: not a training run directory")
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                epoch = int(row["epoch"])
            except (ValueError, KeyError, TypeError) as e:
                raise RunError(f"{path}, line {n}: not a metrics row ({e})") from e
            by_epoch[epoch] = row
    if not by_epoch:
        raise RunError(f"{path} records no epoch yet")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def summarize_run(run_dir: str | os.PathLike, rows: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Final and best figures: val top-1 (best and its epoch), top-5, train losses, teacher agreement (in %, as
    top-1 is), epochs, wall time."""
    rows = list(rows) if rows is not None else read_metrics(run_dir)
    last = rows[-1]
    top1 = [(r["val/top1"], r["epoch"]) for r in rows if _finite(r.get("val/top1")) is not None]
    best = max(top1, key=lambda t: t[0]) if top1 else None
    top5 = [r["val/top5"] for r in rows if _finite(r.get("val/top5")) is not None]
    seconds = [r["train/epoch_seconds"] for r in rows if _finite(r.get("train/epoch_seconds")) is not None]
    agree = _finite(last.get("train/teacher_agreement"))
    return {
        "run": os.path.normpath(str(run_dir)),
        "epochs": len(rows),
        "final_top1": _finite(last.get("val/top1")),
        "best_top1": best[0] if best else None,
        "best_epoch": best[1] + 1 if best else None,  # 1-based, as the training log prints it
        "final_top5": _finite(last.get("val/top5")),
        "best_top5": max(top5) if top5 else None,
        "final_train_loss": _finite(last.get("train/loss")),
        "final_task_loss": _finite(last.get("train/task_loss")),
        "final_teacher_agreement": None if agree is None else 100.0 * agree,
        "wall_seconds": sum(seconds) if len(seconds) == len(rows) else None,
    }


# The loss every run shares: a distilled run's train/loss adds alpha * T^2 * KL (about 8-12 at T = 4), which no
# labels-only run has, so the two are not comparable; the cross-entropy on the labels is.
TASK_LOSS = "train/task_loss"
# metrics.jsonl keys recorded as fractions, shown in % beside top-1
PERCENT_OF_FRACTION = ("train/teacher_agreement",)

_COLUMNS = [("run", "run", "{}"), ("epochs", "epochs", "{}"), ("final_top1", "val top-1", "{:.2f}"),
            ("best_top1", "best top-1", "{:.2f}"), ("best_epoch", "@epoch", "{}"), ("final_top5", "val top-5", "{:.2f}"),
            ("final_task_loss", "label CE", "{:.4f}"), ("final_train_loss", "train loss", "{:.4f}"),
            ("final_teacher_agreement", "agree %", "{:.2f}"), ("wall_seconds", "wall s", "{:.1f}")]


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The runs side by side as an aligned text table (``-`` where a figure was not recorded)."""
    cells = [[title for _, title, _ in _COLUMNS]]
    for s in summaries:
        cells.append(["-" if s.get(key) is None else fmt.format(s[key]) for key, _, fmt in _COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, metric: str = "val/top1",
              runs: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """Draw the runs' loss on the labels and ``metric`` per epoch side by side into the PNG ``out``."""
    runs = runs if runs is not None else {str(d): read_metrics(d) for d in run_dirs}
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise RunError(f"cannot write {out}: {out.parent} is not a directory")
    curves_figure(runs, metric).savefig(out, format="png", dpi=110)
    return out


def curves_figure(runs: dict[str, list[dict[str, Any]]], metric: str = "val/top1"):
    """The figure of :func:`plot_runs`: left the cross-entropy on the labels (every run has it, distilled or
    not; ``train/loss`` for runs recorded before it was logged), right ``metric`` (fractions in %). A run keeps
    one colour in both panels, and the legend names every run, saying which do not record ``metric``."""
    Figure = optional_import("matplotlib.figure", extra="plot", what="plots").Figure
    MaxNLocator = optional_import("matplotlib.ticker", extra="plot", what="plots").MaxNLocator
    if not any(metric in r for rows in runs.values() for r in rows):
        known = sorted({k for rows in runs.values() for r in rows for k in r if k != "epoch"})
        raise RunError(f"no run records {metric!r}; recorded metrics: {', '.join(known)}")
    loss = TASK_LOSS if any(TASK_LOSS in r for rows in runs.values() for r in rows) else "train/loss"
    scale = 100.0 if metric in PERCENT_OF_FRACTION else 1.0
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    panels = fig.subplots(1, 2)
    titles = {loss: ("train loss on the labels (cross-entropy; a distilled run's total adds its KD term)"
                     if loss == TASK_LOSS else "train/loss (the runs' total loss: KD runs' includes alpha*T^2*KL)"),
              metric: metric + (" (%)" if scale != 1.0 else "")}
    handles = {}
    for ax, key in zip(panels, (loss, metric)):
        for i, (name, rows) in enumerate(runs.items()):
            pts = [(r["epoch"] + 1, r[key] * (scale if key == metric else 1.0)) for r in rows
                   if _finite(r.get(key)) is not None]
            if pts:
                xs, ys = zip(*pts)
                (line,) = ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, color=f"C{i % 10}",
                                  label=os.path.normpath(name))
                handles.setdefault(name, line)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(titles[key].split(" (")[0] if key == loss else titles[key])
        ax.set_title(titles[key], fontsize="small" if key == loss else None)
        ax.grid(alpha=0.3)
    missing = {name for name, rows in runs.items() if not any(_finite(r.get(metric)) is not None for r in rows)}
    for name, line in handles.items():
        if name in missing:
            line.set_label(f"{os.path.normpath(name)} (no {metric})")
    panels[1].legend(handles=list(handles.values()), fontsize="small")
    return fig
