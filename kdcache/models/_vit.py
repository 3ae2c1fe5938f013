"""Vision Transformer with an optional DeiT distillation token and an optional TokenLearner.

One class covers the three student designs kdcache trains from a teacher cache:

* a plain ViT (Dosovitskiy et al. 2021), class-token or average-pooled head;
* DeiT with a distillation token (Touvron et al. 2021, ``distilled=True``): a second prefix token
  with its own head ``head_dist``. Training returns ``(cls_logits, dist_logits)`` so the loss can
  supervise the class head with labels and the distillation head with the teacher; eval returns
  their average. The token and the head are parameters of the model, so a saved student keeps them;
* a ViT with TokenLearner (Ryoo et al. 2021, ``tokenlearner={...}``) that shrinks the patch grid to
  a few learned tokens midway through the blocks (see :mod:`kdcache.models._tokenlearner` for how
  prefix tokens bypass it).

Registered presets of the TokenLearner ViT live here; DeiT presets live in :mod:`kdcache.models._deit`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import IMAGENET_MEAN, IMAGENET_STD, set_model_cfg
from kdcache.models._layers import LN_EPS, Block, PatchEmbed, _positive, _probability
from kdcache.models._registry import register_model
from kdcache.models._tokenlearner import TokenLearner

__all__ = ["VisionTransformer", "build_vit"]

_TOKENLEARNER_KEYS = {"after_block", "num_tokens", "version", "hidden", "groups"}


class VisionTransformer(nn.Module):
    """ViT / DeiT / TokenLearner-ViT.

    ``mlp_dim`` (if given) overrides ``mlp_ratio``. ``drop_path_rate`` is the stochastic-depth rate
    of the last block; block ``i`` uses ``drop_path_rate * i / (depth - 1)``. ``tokenlearner`` is a
    dict ``{"after_block": int, "num_tokens": int, "version": "1.0" | "1.1", "hidden"?: int,
    "groups"?: int}``; ``after_block`` is the 0-based index of the block after which TokenLearner
    runs (``2`` = after ``blocks.2``, as in the Keras example's ``i == num_layers // 2``).
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int = 3,
        num_classes: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        class_token: bool = True,
        distilled: bool = False,
        global_pool: Literal["token", "avg"] = "token",
        tokenlearner: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _positive("num_classes", num_classes)
        _positive("depth", depth)
        _positive("embed_dim", embed_dim)
        _positive("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ModelError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if global_pool not in ("token", "avg"):
            raise ModelError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ModelError("global_pool='token' needs class_token=True; use global_pool='avg' without one")
        if distilled and global_pool != "token":
            raise ModelError("distilled=True (DeiT) pools the class and distillation tokens: use global_pool='token'")
        _probability("drop_path_rate", drop_path_rate)
        mlp_dim = mlp_dim if mlp_dim is not None else int(embed_dim * mlp_ratio)

        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.distilled = distilled
        self.num_prefix_tokens = int(class_token) + int(distilled)

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(_probability("drop_rate", drop_rate))

        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[
            Block(dim=embed_dim, num_heads=num_heads, mlp_dim=mlp_dim, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rate)
            for rate in rates
        ])
        self.tokenlearner_after: int | None = None
        self.tokenlearner: TokenLearner | None = None
        if tokenlearner is not None:
            self.tokenlearner_after, self.tokenlearner = self._build_tokenlearner(tokenlearner, depth, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self.head_dist = nn.Linear(embed_dim, num_classes) if distilled else None
        self._init_weights()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters the optimiser leaves undecayed besides norms and biases (timm's convention)."""
        return {"pos_embed", "cls_token", "dist_token"}

    @staticmethod
    def _build_tokenlearner(cfg: dict[str, Any], depth: int, dim: int) -> tuple[int, TokenLearner]:
        if not isinstance(cfg, dict):
            raise ModelError(f"tokenlearner must be a dict, got {type(cfg).__name__}")
        unknown = set(cfg) - _TOKENLEARNER_KEYS
        if unknown:
            raise ModelError(f"tokenlearner: unknown keys {sorted(unknown)}; expected {sorted(_TOKENLEARNER_KEYS)}")
        if "after_block" not in cfg or "num_tokens" not in cfg:
            raise ModelError("tokenlearner needs 'after_block' and 'num_tokens'")
        after = cfg["after_block"]
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < depth:
            raise ModelError(f"tokenlearner after_block must be a block index in [0, {depth - 1}], got {after!r}")
        layer = TokenLearner(dim=dim, num_tokens=cfg["num_tokens"], version=str(cfg.get("version", "1.0")),
                             hidden=cfg.get("hidden"), groups=cfg.get("groups", 8))
        return after, layer

    def _init_weights(self) -> None:
        # timm/DeiT init: truncated normal (std 0.02) for tokens, position embeddings and linears.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + N, D), or (B, prefix + S, D) with TokenLearner."""
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        x = self.pos_drop(torch.cat([*prefix, x], dim=1) + self.pos_embed)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.tokenlearner_after:
                p = self.num_prefix_tokens
                x = torch.cat([x[:, :p], self.tokenlearner(x[:, p:])], dim=1)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokens -> logits; DeiT: ``(cls_logits, dist_logits)`` in training, their average in eval.

        ``pre_logits=True``: the pooled vector the head reads (timm's convention); DeiT: the mean of the class
        and distillation tokens, as timm's distilled DeiT defines it (eval logits average the two heads)."""
        if self.global_pool == "avg":
            pooled = self.head_drop(x[:, self.num_prefix_tokens:].mean(dim=1))
            return pooled if pre_logits else self.head(pooled)
        if pre_logits:
            return self.head_drop(x[:, 0] if self.head_dist is None else (x[:, 0] + x[:, 1]) / 2)
        logits = self.head(self.head_drop(x[:, 0]))
        if self.head_dist is None:
            return logits
        dist_logits = self.head_dist(self.head_drop(x[:, 1]))
        if self.training:
            return logits, dist_logits
        return (logits + dist_logits) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


_VIT_ARGS = frozenset(inspect.signature(VisionTransformer.__init__).parameters) - {"self", "num_classes"}


def build_vit(name: str, *, num_classes: int, defaults: dict[str, Any], overrides: dict[str, Any],
              mean: tuple[float, float, float] = IMAGENET_MEAN,
              std: tuple[float, float, float] = IMAGENET_STD) -> VisionTransformer:
    """Build a preset: ``defaults`` updated by the user's ``overrides``; input size follows ``img_size``.

    Unknown override names fail with a :class:`ModelError` listing the valid ones, instead of the
    ``TypeError`` a constructor would raise deep inside ``create_model``.
    """
    unknown = set(overrides) - _VIT_ARGS
    if unknown:
        raise ModelError(f"model {name!r}: unknown arguments {sorted(unknown)}; valid: {sorted(_VIT_ARGS)}")
    kwargs = {**defaults, **overrides}
    model = VisionTransformer(num_classes=num_classes, **kwargs)
    return set_model_cfg(model, input_size=kwargs["img_size"], mean=mean, std=std)


# --- TokenLearner ViT presets ----------------------------------------------------------------------
# The public Keras example (keras.io/examples/vision/token_learner): 48 px CIFAR-10 input, 6 px
# patches (8x8 grid), width 128, 4 blocks, 4 heads, MLP 256, dropout 0.1, TokenLearner with 4
# tokens after blocks.2, LayerNorm + global average pool head, no class token.
_TL_MINI = {
    "img_size": 48, "patch_size": 6, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_dim": 256,
    "drop_rate": 0.1, "attn_drop_rate": 0.1, "class_token": False, "global_pool": "avg",
    "tokenlearner": {"after_block": 2, "num_tokens": 4, "version": "1.0"},
}
_TL_TEST = {
    "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "class_token": False,
    "global_pool": "avg", "tokenlearner": {"after_block": 0, "num_tokens": 4, "version": "1.0"},
}


def _v11(cfg: dict[str, Any]) -> dict[str, Any]:
    return {**cfg, "tokenlearner": {**cfg["tokenlearner"], "version": "1.1"}}


@register_model(tags=("student",))
def vit_tokenlearner_mini(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """ViT + TokenLearner v1.0 of the Keras example (48 px, patch 6, 128 wide, 4 blocks, 4 learned tokens)."""
    return build_vit("vit_tokenlearner_mini", num_classes=num_classes, defaults=_TL_MINI, overrides=overrides)


@register_model(tags=("student",))
def vit_tokenlearner_mini_v11(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """vit_tokenlearner_mini with TokenLearner v1.1 (grouped convs, softmax maps)."""
    return build_vit("vit_tokenlearner_mini_v11", num_classes=num_classes, defaults=_v11(_TL_MINI),
                     overrides=overrides)


@register_model(tags=("student",))
def vit_tokenlearner_mini_32(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """vit_tokenlearner_mini for native 32 px CIFAR input (patch 4, the same 8x8 grid)."""
    return build_vit("vit_tokenlearner_mini_32", num_classes=num_classes,
                     defaults={**_TL_MINI, "img_size": 32, "patch_size": 4}, overrides=overrides)


@register_model(tags=("student",))
def vit_mini_32(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """vit_tokenlearner_mini_32 without TokenLearner: all 64 patch tokens through every block (the baseline)."""
    return build_vit("vit_mini_32", num_classes=num_classes,
                     defaults={**_TL_MINI, "img_size": 32, "patch_size": 4, "tokenlearner": None}, overrides=overrides)


@register_model(tags=("student", "test"))
def vit_tokenlearner_test(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """Tiny TokenLearner v1.0 ViT for fast tests (32 px, patch 8, dim 32, 2 blocks)."""
    return build_vit("vit_tokenlearner_test", num_classes=num_classes, defaults=_TL_TEST, overrides=overrides)


@register_model(tags=("student", "test"))
def vit_tokenlearner_test_v11(*, num_classes: int, **overrides: Any) -> VisionTransformer:
    """Tiny TokenLearner v1.1 ViT for fast tests (32 px, patch 8, dim 32, 2 blocks)."""
    return build_vit("vit_tokenlearner_test_v11", num_classes=num_classes, defaults=_v11(_TL_TEST),
                     overrides=overrides)
