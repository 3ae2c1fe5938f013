"""The interface every per-sample view op follows (the ops themselves are listed in ``_oplist``).

An op owns one idea (RandAugment, colour jitter, erasing, ...). It declares its parameter arrays (name ->
trailing shape, numpy dtype), draws one view's parameters from the view's seeded stream (``make_params``:
plain numbers, every draw inside, including whether it applies at all) and applies recorded parameters
(``apply``), in the spirit of torchvision v2's ``make_params`` / ``transform`` split. The dump and the trainer
run the same op objects, so sampling and replay cannot drift apart. ``stage`` says where an op sits:
``"uint8"`` ops run on the cropped, flipped uint8 view; ``"float"`` ops on the float view in [0, 1] before
mixing and normalisation. This interface knows no op: :func:`kdcache.augment._oplist.build_ops` lists them,
and the cache layout, the format description and the CLI's options follow from that list; adding an op
touches its own module, that list and its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from kdcache.augment._spec import ViewSpec

__all__ = ["ViewOp", "f32"]

Params = Mapping[str, Any]


def f32(value: float) -> float:
    """``value`` rounded to float32: what the cache stores, so sampled and replayed arguments are identical."""
    return float(np.float32(value))


class ViewOp:
    """Base of a replayable per-sample op (see the module docstring)."""

    name: str = ""
    stage: str = "uint8"

    def __init__(self, spec: ViewSpec) -> None:
        self.spec = spec

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Parameter array name -> (trailing shape, numpy dtype)."""
        raise NotImplementedError

    def make_params(self) -> dict[str, Any]:
        """One view's parameters (a value per array: a number or nested lists), drawn from torch's global
        generator, which the pipeline has seeded with the view's seed."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """The op on ``x`` (uint8 (3, S, S) for ``stage == "uint8"``, float32 in [0, 1] otherwise)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings, recorded arrays, how they are applied and how they were sampled (for the format doc)."""
        raise NotImplementedError

