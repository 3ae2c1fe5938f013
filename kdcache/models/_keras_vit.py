"""The mini-ViT of the Keras example "Learning to tokenize in Vision Transformers", layer for layer.

keras.io/examples/vision/token_learner (Gosthipaty and Paul, 2021) trains this model on CIFAR-10 and
publishes top-1 accuracy as the mean of 5 runs: 56.55% with a TokenLearner of 8 tokens, 56.50% with 4,
56.11% and 56.37% without one. kdcache's full-data benchmark reproduces that table (docs/benchmarks.md),
so this module follows the example rather than the timm-style :class:`~kdcache.models._vit.VisionTransformer`,
which differs in three places that change what is learned:

* attention: Keras ``MultiHeadAttention(num_heads=4, key_dim=128)`` projects 128 -> 4 x 128 (a 512-wide
  attention, 128 per head) and back to 128; dropout 0.1 on the attention weights, none on the output;
* MLP: ``Dense(256, gelu) -> Dropout(0.1) -> Dense(128, gelu) -> Dropout(0.1)`` (GELU after both layers);
* initialisation: Keras's glorot-uniform on every kernel with Keras's fan rule for the attention's 3-D
  kernels (see :func:`_glorot`), zero biases, position embeddings uniform in [-0.05, 0.05].

The rest: 6 px patches of the 48 px input by a strided convolution (64 tokens, no class token), a learned
position embedding, dropout 0.1, four pre-norm blocks (LayerNorm eps 1e-6), the TokenLearner v1.0
(:class:`~kdcache.models._tokenlearner.TokenLearner`: LayerNorm, three 3x3 GELU convolutions and a
sigmoid one, no biases, the mean over positions of map x the un-normalised tokens) after the third block
(the example's ``i == NUM_LAYERS // 2``), a final LayerNorm, global average pooling and a linear head. The
input is rescaled to [0, 1] only (mean 0, std 1). ``input_mean``/``input_std`` let the model take views
normalised for someone else (a teacher cache's views, normalised with the teacher's mean and std): it undoes
that normalisation first, so its layers still see [0, 1] as in the example, and its eval views use the same.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import set_model_cfg
from kdcache.models._layers import LN_EPS, PatchEmbed, _positive, _probability
from kdcache.models._registry import register_model
from kdcache.models._tokenlearner import TokenLearner

__all__ = ["KerasMiniViT"]


def _glorot(weight: torch.Tensor, keras_shape: tuple[int, ...]) -> None:
    """Keras's ``glorot_uniform`` for a kernel whose Keras shape is ``keras_shape``: for more than two axes
    Keras takes the axes before the last two as a receptive field (its convolution rule), which for the
    attention's (128, heads, key_dim) kernels gives much smaller weights than torch's xavier on the 2-D view."""
    rf = math.prod(keras_shape[:-2]) if len(keras_shape) > 2 else 1
    fan_in, fan_out = keras_shape[-2] * rf, keras_shape[-1] * rf
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-limit, limit)


class KerasAttention(nn.Module):
    """Keras ``MultiHeadAttention(num_heads, key_dim, dropout)`` as self-attention."""

    def __init__(self, *, dim: int, num_heads: int, key_dim: int, attn_drop: float) -> None:
        super().__init__()
        self.num_heads, self.key_dim = _positive("num_heads", num_heads), _positive("key_dim", key_dim)
        self.attn_drop = _probability("attn_drop_rate", attn_drop)
        width = num_heads * key_dim
        self.q, self.k, self.v = (nn.Linear(dim, width) for _ in range(3))
        self.proj = nn.Linear(width, dim)
        for lin in (self.q, self.k, self.v):
            _glorot(lin.weight, (dim, num_heads, key_dim))
        _glorot(self.proj.weight, (num_heads, key_dim, dim))
        for lin in (self.q, self.k, self.v, self.proj):
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.num_heads, self.key_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * self.key_dim))


class KerasBlock(nn.Module):
    """The example's ``transformer()``: x + MHA(LN(x)), then + MLP(LN(.)) with GELU after both Dense layers."""

    def __init__(self, *, dim: int, num_heads: int, key_dim: int, mlp_units: tuple[int, int], drop: float,
                 attn_drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = KerasAttention(dim=dim, num_heads=num_heads, key_dim=key_dim, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        hidden, out = mlp_units
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out)
        self.drop = nn.Dropout(_probability("drop_rate", drop))
        for lin in (self.fc1, self.fc2):
            _glorot(lin.weight, (lin.in_features, lin.out_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.drop(F.gelu(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x)))))))


class KerasMiniViT(nn.Module):
    """The Keras example's ViT; ``num_tokens=None`` leaves out the TokenLearner (the example's baseline)."""

    def __init__(self, *, num_classes: int, img_size: int = 48, patch_size: int = 6, embed_dim: int = 128,
                 depth: int = 4, num_heads: int = 4, key_dim: int = 128, mlp_units: tuple[int, int] = (256, 128),
                 drop_rate: float = 0.1, attn_drop_rate: float = 0.1, num_tokens: int | None = 8,
                 tokenlearner_after: int | None = None, input_mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 input_std: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        if len(input_mean) != 3 or len(input_std) != 3 or min(input_std) <= 0:
            raise ModelError(f"input_mean and input_std must be 3 numbers (std > 0), got {input_mean!r}, {input_std!r}")
        self.input_mean, self.input_std = tuple(float(v) for v in input_mean), tuple(float(v) for v in input_std)
        self.register_buffer("_in_mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_in_std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False)
        _positive("num_classes", num_classes)
        _positive("depth", depth)
        if mlp_units[-1] != embed_dim:
            raise ModelError(f"mlp_units must end with embed_dim {embed_dim} (a residual branch), got {mlp_units!r}")
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.empty(1, self.patch_embed.num_patches, embed_dim).uniform_(-0.05, 0.05))
        self.pos_drop = nn.Dropout(_probability("drop_rate", drop_rate))
        self.blocks = nn.ModuleList(
            KerasBlock(dim=embed_dim, num_heads=num_heads, key_dim=key_dim, mlp_units=tuple(mlp_units),
                       drop=drop_rate, attn_drop=attn_drop_rate) for _ in range(depth))
        self.tokenlearner_after = None
        self.tokenlearner = None
        if num_tokens is not None:
            after = depth // 2 if tokenlearner_after is None else tokenlearner_after
            if not 0 <= after < depth:
                raise ModelError(f"tokenlearner_after must be a block index in [0, {depth - 1}], got {after!r}")
            self.tokenlearner_after, self.tokenlearner = after, TokenLearner(dim=embed_dim, num_tokens=num_tokens)
            for m in self.tokenlearner.modules():
                if isinstance(m, nn.Conv2d):  # Keras Conv2D kernels are (3, 3, in, out): the same fans as torch's
                    nn.init.xavier_uniform_(m.weight)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        _glorot(self.head.weight, (embed_dim, num_classes))
        nn.init.zeros_(self.head.bias)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 48, 48) -> normalised tokens (B, 64, D), or (B, S, D) with the TokenLearner."""
        if self.input_mean != (0.0, 0.0, 0.0) or self.input_std != (1.0, 1.0, 1.0):
            x = x * self._in_std + self._in_mean  # back to [0, 1]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.tokenlearner_after:
                x = self.tokenlearner(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build(num_classes: int, overrides: dict[str, Any], **defaults: Any) -> KerasMiniViT:
    model = KerasMiniViT(num_classes=num_classes, **{**defaults, **overrides})
    # the example rescales to [0, 1] only; its eval view is the whole image resized to the input size
    return set_model_cfg(model, input_size=model.patch_embed.img_size, mean=model.input_mean, std=model.input_std)


@register_model(tags=("student",))
def keras_tokenlearner_vit(*, num_classes: int, **overrides: Any) -> KerasMiniViT:
    """The Keras TokenLearner example's mini-ViT, 8 learned tokens (published 56.55% on CIFAR-10, 48 px)."""
    return _build(num_classes, overrides, num_tokens=8)


@register_model(tags=("student",))
def keras_vit(*, num_classes: int, **overrides: Any) -> KerasMiniViT:
    """The Keras TokenLearner example's mini-ViT without TokenLearner (published 56.11% / 56.37%, 48 px)."""
    return _build(num_classes, overrides, num_tokens=None)


@register_model(tags=("student", "test"))
def keras_tokenlearner_vit_test(*, num_classes: int, **overrides: Any) -> KerasMiniViT:
    """A tiny keras_tokenlearner_vit for fast tests (16 px, patch 4, width 16, 2 blocks, 4 tokens)."""
    return _build(num_classes, overrides, img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                  key_dim=8, mlp_units=(32, 16), num_tokens=4)
