"""TokenLearner (Ryoo et al., "TokenLearner: What can 8 learned tokens do for images and videos?", 2021).

TokenLearner replaces a grid of N = H*W tokens by S learned tokens: it predicts S spatial
attention maps from the tokens and pools the tokens under each map. Inserted midway through a
ViT, every later block attends over S tokens instead of N, which is where the FLOPs go.

Two versions, selected by ``version``:

* ``"1.0"`` (the paper's module, as in the public Keras example
  https://keras.io/examples/vision/token_learner/): LayerNorm, three 3x3 convs with GELU and a
  final 3x3 conv to S maps, a sigmoid, and a spatially *averaged* product of each map with the
  (un-normalised) input tokens.
* ``"1.1"`` (``TokenLearnerModuleV11`` of the reference code): LayerNorm, a grouped 1x1 conv and a
  1x1 conv to S maps, a softmax over the spatial positions (each map sums to one), and a grouped
  1x1 "feature" conv on the input tokens that the maps then pool. The authors found it trains
  better from scratch with limited data.

How :class:`~kdcache.models._vit.VisionTransformer` uses it: after block ``after_block`` the
sequence is split into its prefix tokens (class token, DeiT distillation token) and the patch
grid. Only the grid goes through TokenLearner; the prefix tokens bypass it untouched and are
re-prepended to the S learned tokens, so the class/distillation heads read the same tokens as in
a plain ViT. Position embeddings are added once, before the first block, and are already mixed
into the grid tokens TokenLearner pools, so nothing is re-embedded afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._layers import LN_EPS

__all__ = ["TOKENLEARNER_VERSIONS", "TokenLearner"]

TOKENLEARNER_VERSIONS = ("1.0", "1.1")


class TokenLearner(nn.Module):
    """Learn ``num_tokens`` tokens from a square token grid: (B, H*W, C) -> (B, S, C).

    ``hidden`` is the width of the attention-map convs: for v1.0 the channels of the three 3x3
    convs (default ``num_tokens``, as in the paper and the Keras example); for v1.1 the channels of
    the grouped 1x1 conv (default ``dim``, as in the reference). ``groups`` (v1.1 only) is the group
    count of the grouped convs and must divide ``dim`` and ``hidden``.
    """

    def __init__(self, *, dim: int, num_tokens: int, version: str = "1.0", hidden: int | None = None,
                 groups: int = 8) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_tokens", num_tokens), ("groups", groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"TokenLearner {name} must be a positive integer, got {value!r}")
        if version not in TOKENLEARNER_VERSIONS:
            raise ModelError(f"TokenLearner version must be one of {TOKENLEARNER_VERSIONS}, got {version!r}")
        hidden = hidden if hidden is not None else (num_tokens if version == "1.0" else dim)
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ModelError(f"TokenLearner hidden must be a positive integer, got {hidden!r}")
        self.dim, self.num_tokens, self.version, self.hidden = dim, num_tokens, version, hidden
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        if version == "1.0":
            self.groups = 1
            self.attention_maps = nn.Sequential(
                nn.Conv2d(dim, hidden, 3, padding=1, bias=False), nn.GELU(),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.GELU(),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.GELU(),
                nn.Conv2d(hidden, num_tokens, 3, padding=1, bias=False),
            )
            self.feature_conv = None
        else:
            if dim % groups or hidden % groups:
                raise ModelError(f"TokenLearner v1.1: groups {groups} must divide dim {dim} and hidden {hidden}")
            self.groups = groups
            self.attention_maps = nn.Sequential(
                nn.Conv2d(dim, hidden, 1, groups=groups, bias=False),
                nn.Conv2d(hidden, num_tokens, 1, bias=False),
            )
            self.feature_conv = nn.Conv2d(dim, dim, 1, groups=groups, bias=False)

    @staticmethod
    def _to_map(x: torch.Tensor, side: int) -> torch.Tensor:
        # (B, H*W, C) row-major grid -> (B, C, H, W) for the convs
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, n, c = x.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ModelError(f"TokenLearner needs a square token grid, got {n} tokens")
        if c != self.dim:
            raise ModelError(f"TokenLearner built for dim {self.dim}, got tokens of dim {c}")
        maps = self.attention_maps(self._to_map(self.norm(x), side)).flatten(2)  # (B, S, N)
        if self.version == "1.0":
            # Sigmoid maps, then the spatial mean of map * tokens: (B, S, N) @ (B, N, C) / N.
            return torch.bmm(torch.sigmoid(maps), x) / n
        feats = self.feature_conv(self._to_map(x, side)).flatten(2).transpose(1, 2)  # (B, N, C)
        return torch.bmm(maps.softmax(dim=-1), feats)

    def extra_repr(self) -> str:
        return f"version={self.version}, num_tokens={self.num_tokens}, hidden={self.hidden}, groups={self.groups}"
