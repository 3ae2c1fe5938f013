"""Model EMA on ``torch.optim.swa_utils``: an :class:`AveragedModel` with torch's EMA update.

After each optimiser step ``ema = d · ema + (1 − d) · model`` over parameters and buffers
(``use_buffers=True``, so batch-norm statistics are averaged too; torch's ``get_ema_multi_avg_fn``).
The first update copies the model. With warm-up the decay of update ``t`` (0-based, counting the
copy) is ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``), so early averages are not dominated by the random initialisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kdcache.errors import CheckpointError, ConfigError

__all__ = ["ModelEma", "ema_decay_at"]


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """The decay used by the ``update``-th call (0-based) of :meth:`ModelEma.update`."""
    return min(decay, (1.0 + update) / (10.0 + update)) if warmup else decay


class ModelEma:
    """An exponential moving average of ``model``'s weights, kept on the model's device."""

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay, self.warmup = decay, warmup
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the model (what is evaluated and saved)."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = ema_decay_at(self.updates, self.decay, self.warmup)
        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(d)
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.module.load_state_dict(state["state_dict"])
            self.averaged.n_averaged.fill_(int(state["updates"]))
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"the checkpoint's EMA does not fit this model: {e}") from e
