"""VisionTransformer: every tiny preset trains, stochastic depth, checkpoints, argument checks."""

from __future__ import annotations

import pytest
import torch

from kdcache.errors import ModelError
from kdcache.models import create_model, list_models, model_cfg
from kdcache.models._layers import DropPath, PatchEmbed
from kdcache.models._vit import VisionTransformer

TEST_MODELS = ["deit_test", "deit_test_distilled", "vit_tokenlearner_test", "vit_tokenlearner_test_v11"]
TINY = {"img_size": 32, "patch_size": 8, "num_classes": 5, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _logits(out):
    return out if isinstance(out, torch.Tensor) else torch.stack(out)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_test_presets_forward_backward(name):
    assert name in list_models("test")
    model = create_model(name, num_classes=7)
    model.train()
    out = model(torch.randn(3, 3, 32, 32))
    logits = _logits(out)
    assert logits.shape[-2:] == (3, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_vit_tokenlearner_mini_on_48px():
    model = create_model("vit_tokenlearner_mini", num_classes=10).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vit_tokenlearner_mini parameters: {n_params}")
    assert 400_000 < n_params < 700_000
    assert model_cfg(model).input_size == 48
    assert model.patch_embed.num_patches == 64
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 48, 48))
        logits = model(torch.randn(2, 3, 48, 48))
    assert tokens.shape == (2, 4, 128)  # no class token: only the 4 learned tokens remain
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_overrides_and_input_size_follow_img_size():
    model = create_model("vit_tokenlearner_mini_32", num_classes=3, depth=3, drop_path_rate=0.2)
    assert len(model.blocks) == 3 and model_cfg(model).input_size == 32
    model = create_model("deit_test", num_classes=3, img_size=64)
    assert model_cfg(model).input_size == 64 and model.patch_embed.num_patches == 64
    assert model_cfg(model).kwargs == {"num_classes": 3, "img_size": 64}


def test_drop_path_rates_increase_linearly():
    model = VisionTransformer(**{**TINY, "depth": 5}, drop_path_rate=0.4)
    rates = [block.drop_path.drop_prob for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_drop_path_drops_whole_samples():
    layer = DropPath(drop_prob=0.5).train()
    x = torch.ones(400, 3, 4)
    y = layer(x)
    per_sample = y.flatten(1)
    # each sample is either dropped entirely or kept and rescaled by 1 / keep
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    assert 0.35 < (per_sample[:, 0] == 0).float().mean() < 0.65
    assert torch.equal(layer.eval()(x), x)


def test_state_dict_round_trip_gives_identical_eval_outputs(tmp_path):
    for name in TEST_MODELS:
        model = create_model(name, num_classes=4, drop_path_rate=0.1)
        path = tmp_path / f"{name}.pt"
        torch.save(model.state_dict(), path)
        torch.manual_seed(123)  # a fresh model with different random weights
        fresh = create_model(name, num_classes=4, drop_path_rate=0.1)
        x = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(fresh.eval()(x), model.eval()(x))
        fresh.load_state_dict(torch.load(path, weights_only=True))
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x)), name


def test_wrong_input_size_names_both_sizes():
    model = create_model("deit_test", num_classes=2)
    with pytest.raises(ModelError, match=r"3x48x48.*3x32x32"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ModelError, match="1x32x32"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ModelError):
        PatchEmbed(img_size=30, patch_size=8, embed_dim=8)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"embed_dim": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"img_size": 30}, "not divisible by patch_size"),
        ({"num_heads": 0}, "num_heads"),
        ({"depth": 0}, "depth"),
        ({"class_token": False}, "class_token"),
        ({"global_pool": "max"}, "global_pool"),
        ({"distilled": True, "global_pool": "avg", "class_token": True}, "distill"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"attn_drop_rate": 1.0}, "attn_drop_rate"),
        ({"num_classes": 0}, "num_classes"),
        ({"tokenlearner": {"after_block": 2, "num_tokens": 4}}, "after_block"),
        ({"tokenlearner": {"after_block": 0}}, "num_tokens"),
        ({"tokenlearner": {"after_block": 0, "num_tokens": 4, "size": 3}}, "unknown keys"),
        ({"tokenlearner": {"after_block": 0, "num_tokens": 4, "version": "2"}}, "version"),
        ({"tokenlearner": [0, 4]}, "dict"),
    ],
)
def test_bad_arguments_raise_model_error(bad, match):
    with pytest.raises(ModelError, match=match):
        VisionTransformer(**{**TINY, **bad})


def test_unknown_override_is_a_model_error():
    with pytest.raises(ModelError, match="unknown arguments.*'widht'"):
        create_model("deit_test", num_classes=2, widht=3)
