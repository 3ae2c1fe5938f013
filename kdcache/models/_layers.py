"""Transformer building blocks shared by the ViT family: patch embedding, attention, MLP, stochastic depth.

The blocks follow the pre-norm ViT of Dosovitskiy et al. (2021) as timm and DeiT implement it
(LayerNorm eps 1e-6, GELU MLP, residual branches scaled by per-sample stochastic depth), so weights
and behaviour match what readers of those codebases expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ModelError

__all__ = ["LN_EPS", "Attention", "Block", "DropPath", "Mlp", "PatchEmbed"]

LN_EPS = 1e-6


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{name} must be a positive integer, got {value!r}")
    return value


def _probability(name: str, value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise ModelError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class PatchEmbed(nn.Module):
    """Cut a square image into non-overlapping patches and project each to ``embed_dim`` (one strided conv).

    The input size is fixed because the position embeddings are learned per grid cell; a wrong size
    is a user error (usually a view spec that does not match the model), so it fails with both sizes.
    """

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int = 3, embed_dim: int) -> None:
        super().__init__()
        _positive("img_size", img_size)
        _positive("patch_size", patch_size)
        _positive("in_chans", in_chans)
        _positive("embed_dim", embed_dim)
        if img_size % patch_size:
            raise ModelError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N, D) patch tokens in row-major grid order."""
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            got = "x".join(str(s) for s in x.shape[1:]) if x.ndim == 4 else f"shape {tuple(x.shape)}"
            raise ModelError(
                f"input {got} does not match the model's expected input "
                f"{self.in_chans}x{self.img_size}x{self.img_size}; resize the images or build the "
                f"model with img_size={x.shape[-1]}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over fused ``scaled_dot_product_attention`` (no (N, N) tensor kept for backward)."""

    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        _positive("dim", dim)
        _positive("num_heads", num_heads)
        if dim % num_heads:
            raise ModelError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = _probability("attn_drop_rate", attn_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(_probability("drop_rate", proj_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, *, in_features: int, hidden_features: int, out_features: int | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        _positive("mlp hidden size", hidden_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(_probability("drop_rate", drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples while training.

    Each sample keeps the branch with probability ``1 - drop_prob``; kept branches are scaled by
    ``1 / (1 - drop_prob)`` so the expected output equals the eval-mode output.
    """

    def __init__(self, *, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = _probability("drop_path_rate", drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm(x)))`` then ``x + drop_path(mlp(norm(x)))``."""

    def __init__(self, *, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=drop)
        self.drop_path = DropPath(drop_prob=drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(in_features=dim, hidden_features=mlp_dim, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
