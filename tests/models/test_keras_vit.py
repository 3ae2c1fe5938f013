"""The Keras TokenLearner example's mini-ViT: shape, parameter count, Keras's initialisation, errors."""

from __future__ import annotations

import math

import pytest
import torch

from kdcache.errors import ModelError
from kdcache.models import create_model, model_cfg, model_tags


def test_forward_backward_and_the_published_architecture():
    tl = create_model("keras_tokenlearner_vit", num_classes=10)
    plain = create_model("keras_vit", num_classes=10)
    # by hand: patch conv 13,952 + positions 8,192 + 4 blocks x 330,240 (q, k, v 128 -> 4 x 128 and back,
    # MLP 256/128, two LayerNorms) + final LayerNorm 256 + head 1,290; TokenLearner (8 tokens) 11,200
    assert sum(p.numel() for p in plain.parameters()) == 13952 + 8192 + 4 * 330240 + 256 + 1290
    assert sum(p.numel() for p in tl.parameters()) == 1344650 + 11200
    cfg = model_cfg(tl)
    assert (cfg.input_size, cfg.mean, cfg.std) == (48, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert tl.tokenlearner_after == 2 and tl.tokenlearner.num_tokens == 8 and plain.tokenlearner is None
    x = torch.rand(2, 3, 48, 48)
    tokens = tl.forward_features(x)
    assert tokens.shape == (2, 8, 128) and plain.forward_features(x).shape == (2, 64, 128)
    out = tl(x)
    out.sum().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in tl.parameters())
    assert tl.forward_head(tokens, pre_logits=True).shape == (2, 128)
    assert "student" in model_tags("keras_tokenlearner_vit")


def test_initialisation_follows_keras():
    torch.manual_seed(0)
    m = create_model("keras_vit", num_classes=10)
    attn = m.blocks[0].attn
    q_limit = math.sqrt(6 / (4 * 128 * 128 / 128 * 1 + 128 * 128))  # Keras fans of a (128, 4, 128) kernel
    assert attn.q.weight.abs().max() <= q_limit and attn.q.weight.abs().max() > 0.9 * q_limit
    o_limit = math.sqrt(6 / (512 + 512))  # a (4, 128, 128) kernel
    assert o_limit * 0.9 < attn.proj.weight.abs().max() <= o_limit
    assert m.pos_embed.abs().max() <= 0.05 and float(attn.q.bias.detach().abs().sum()) == 0.0


def test_bad_arguments_are_model_errors():
    with pytest.raises(ModelError, match="mlp_units must end with embed_dim"):
        create_model("keras_vit", num_classes=10, mlp_units=(256, 64))
    with pytest.raises(ModelError, match="tokenlearner_after"):
        create_model("keras_tokenlearner_vit", num_classes=10, tokenlearner_after=4)
    small = create_model("keras_tokenlearner_vit", num_classes=10, num_tokens=4)
    assert small.tokenlearner.num_tokens == 4


def test_input_normalisation_is_undone_so_the_layers_see_zero_to_one():
    """A student on a teacher cache's views (normalised with the teacher's mean/std) computes what the
    example's model computes on [0, 1] views."""
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    torch.manual_seed(0)
    plain = create_model("keras_tokenlearner_vit", num_classes=10).eval()
    torch.manual_seed(0)
    normed = create_model("keras_tokenlearner_vit", num_classes=10, input_mean=mean, input_std=std).eval()
    x = torch.rand(2, 3, 48, 48)
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(plain(x), normed(xn), atol=1e-5)
    assert (model_cfg(normed).mean, model_cfg(normed).std) == (mean, std)
    assert set(plain.state_dict()) == set(normed.state_dict())  # no extra weights to save
