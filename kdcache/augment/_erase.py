"""Random erasing (timm's ``RandomErasing``), replayable.

Boxes are drawn as timm draws them: with probability ``reprob`` a view gets ``count`` boxes, ``count``
uniform in [1, recount]; each box tries up to 10 times an area ``uniform(re_area) * S² / count`` and a
log-uniform aspect ratio in ``re_aspect``, ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``,
and is placed uniformly when ``h < S`` and ``w < S``. A view records its boxes as integers
(top, left, height, width; zero height for an unused slot). The fill is, in normalised units, 0 (``const``),
one standard-normal value per channel (``rand``) or per pixel (``pixel``): that noise is the one place where a
seed stands in for parameters. It comes from a recorded seed through numpy's PCG64 generator
(``numpy.random.Generator(PCG64(seed)).standard_normal(shape, dtype=float32)``, box by box), a stream that
numpy pins by algorithm, so anyone can rebuild it.

timm erases the normalised image; kdcache writes the same values before mixing and normalisation, as
``v * std + mean`` in [0, 1] units, which normalisation turns back into ``v`` (up to float rounding) — one
op order for every view, erasing or not, so that caches made before erasing existed replay bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kdcache.augment._op import ViewOp

__all__ = ["RandomErasingOp", "erase_noise"]

_ATTEMPTS = 10
_SEED_RANGE = 2**62


def erase_noise(seed: int, shapes: list[tuple[int, int, int]]) -> list[np.ndarray]:
    """The pinned noise stream: one float32 standard-normal array per box shape, in order."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


class RandomErasingOp(ViewOp):
    """timm's RandomErasing (modes const / rand / pixel) on the float view."""

    name = "random_erasing"
    stage = "float"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"erase_box": ((self.spec.recount, 4), "int16"), "erase_seed": ((), "int64")}

    def make_params(self) -> dict[str, Any]:
        s, spec = self.spec.size, self.spec
        boxes = [[0, 0, 0, 0] for _ in range(spec.recount)]
        if not torch.rand(()).item() < spec.reprob:
            return {"erase_box": boxes, "erase_seed": 0}
        count = int(torch.randint(1, spec.recount + 1, ()))
        log_aspect = (math.log(spec.re_aspect[0]), math.log(spec.re_aspect[1]))
        for j in range(count):
            for _ in range(_ATTEMPTS):
                area = torch.empty(()).uniform_(*spec.re_area).item() * s * s / count
                aspect = math.exp(torch.empty(()).uniform_(*log_aspect).item())
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if 0 < w < s and 0 < h < s:
                    top = int(torch.randint(0, s - h + 1, ()))
                    left = int(torch.randint(0, s - w + 1, ()))
                    boxes[j] = [top, left, h, w]
                    break
        seed = int(torch.randint(_SEED_RANGE, ())) if spec.remode != "const" else 0
        return {"erase_box": boxes, "erase_seed": seed}

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:
        boxes = [tuple(int(v) for v in b) for b in params["erase_box"] if int(b[2]) > 0]
        if not boxes:
            return x
        mode = self.spec.remode
        if mode == "const":
            noise = [np.zeros((3, 1, 1), np.float32)] * len(boxes)
        else:
            shapes = [(3, 1, 1) if mode == "rand" else (3, h, w) for _, _, h, w in boxes]
            noise = erase_noise(int(params["erase_seed"]), shapes)
        x = x.clone()
        for (top, left, h, w), v in zip(boxes, noise):
            fill = torch.from_numpy(v).mul(self._std).add_(self._mean)
            x[:, top:top + h, left:left + w] = fill.expand(3, h, w)
        return x

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": "random_erasing",
            "settings": {"reprob": spec.reprob, "remode": spec.remode, "recount": spec.recount,
                         "re_area": list(spec.re_area), "re_aspect": list(spec.re_aspect)},
            "recorded": ["erase_box", "erase_seed"],
            "apply": ("on the float view x in [0, 1]: for each row (top, left, h, w) of erase_box[i] with h > 0, "
                      "in order, v = zeros (const), or the next array of numpy.random.Generator("
                      "numpy.random.PCG64(erase_seed[i])).standard_normal(shape, dtype=float32) with shape "
                      "(3, 1, 1) (rand) or (3, h, w) (pixel); x[:, top:top+h, left:left+w] = v * std + mean "
                      "(the normalised value v, written before normalisation)."),
            "sampled_by": "timm.data.random_erasing.RandomErasing's draws, through torch's seeded generator",
        }
