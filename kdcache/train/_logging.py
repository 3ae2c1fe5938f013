"""Per-epoch metrics: JSON lines always, TensorBoard event files when the extra is installed."""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["MetricsLogger"]


class MetricsLogger:
    def __init__(self, out_dir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional `tensorboard` extra is not installed
            SummaryWriter = None
        if SummaryWriter is not None:
            self._tb = SummaryWriter(log_dir=os.path.join(out_dir, "tb"))

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def keep_before(self, epoch: int) -> None:
        """Drop the rows of ``epoch`` and later: a run killed after writing an epoch's row but before its
        checkpoint trains that epoch again on resume, and must not list it twice."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", -1) < epoch]
        if len(kept) != len(lines):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def write(self, row: dict[str, Any], *, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "epoch":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
