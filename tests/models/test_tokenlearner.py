"""TokenLearner v1.0 / v1.1: N grid tokens -> S learned tokens, prefix tokens bypass it, fewer FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdcache.errors import ModelError
from kdcache.models import _vit as vit
from kdcache.models import create_model
from kdcache.models._tokenlearner import TokenLearner


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_grid_of_n_tokens_becomes_s_tokens(version):
    layer = TokenLearner(dim=16, num_tokens=3, version=version)
    x = torch.randn(2, 25, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 3, 16) and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_v10_is_a_sigmoid_weighted_spatial_mean():
    layer = TokenLearner(dim=8, num_tokens=2, version="1.0")
    x = torch.randn(3, 16, 8)
    with torch.no_grad():
        layer.attention_maps[-1].weight.zero_()  # all maps = sigmoid(0) = 0.5 everywhere
        y = layer(x)
    torch.testing.assert_close(y, 0.5 * x.mean(1, keepdim=True).expand(-1, 2, -1))


def test_v10_maps_select_positions():
    layer = TokenLearner(dim=4, num_tokens=2, version="1.0")
    x = torch.randn(1, 9, 4)
    with torch.no_grad():
        y = layer(x)
        # recompute by hand: sigmoid maps from the normalised grid, mean of map * raw tokens
        grid = layer.norm(x).transpose(1, 2).reshape(1, 4, 3, 3)
        maps = torch.sigmoid(layer.attention_maps(grid).flatten(2))  # (1, 2, 9)
        expected = (maps.unsqueeze(-1) * x.unsqueeze(1)).mean(2)
    torch.testing.assert_close(y, expected)


def test_v11_softmax_maps_pool_the_feature_conv():
    layer = TokenLearner(dim=8, num_tokens=3, version="1.1", groups=4)
    assert layer.attention_maps[0].groups == 4 and layer.feature_conv.groups == 4
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        layer.attention_maps[-1].weight.zero_()  # uniform softmax over the 16 positions
        layer.feature_conv.weight.copy_(torch.eye(2).repeat(4, 1).reshape(8, 2, 1, 1))  # identity per group
        y = layer(x)
    torch.testing.assert_close(y, x.mean(1, keepdim=True).expand(-1, 3, -1))


def test_v11_maps_sum_to_one_over_space():
    layer = TokenLearner(dim=8, num_tokens=2, version="1.1", groups=2)
    with torch.no_grad():
        layer.feature_conv.weight.copy_(torch.eye(4).repeat(2, 1).reshape(8, 4, 1, 1))
        x = torch.ones(1, 9, 8) * 3.0  # constant tokens: any convex combination returns them
        torch.testing.assert_close(layer(x), torch.full((1, 2, 8), 3.0))


@pytest.mark.parametrize("name", ["vit_tokenlearner_test", "vit_tokenlearner_test_v11"])
@pytest.mark.parametrize("class_token", [False, True])
def test_vit_shapes_through_forward_features(name, class_token):
    pool = "token" if class_token else "avg"
    model = create_model(name, num_classes=3, class_token=class_token, global_pool=pool).eval()
    tl = model.tokenlearner
    assert tl is not None and tl.version == ("1.1" if name.endswith("v11") else "1.0")
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 32, 32))
        # the builder itself (create_model drops None overrides) builds the same ViT without TokenLearner
        plain = getattr(vit, name)(num_classes=3, class_token=class_token, global_pool=pool, tokenlearner=None)
        assert plain.tokenlearner is None
        plain = plain.eval().forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, int(class_token) + 4, 32)  # 16 grid tokens -> 4 learned
    assert plain.shape == (2, int(class_token) + 16, 32)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_prefix_tokens_bypass_tokenlearner(version):
    model = create_model("deit_test_distilled", num_classes=3,
                         tokenlearner={"after_block": 0, "num_tokens": 2, "version": version}).eval()
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.update(before=o))
    model.blocks[1].register_forward_pre_hook(lambda m, i: seen.update(after=i[0]))
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 32, 32))
        learned = model.tokenlearner(seen["before"][:, 2:])
    assert tokens.shape == (2, 2 + 2, 32)
    assert seen["after"].shape == (2, 4, 32)
    assert torch.equal(seen["after"][:, :2], seen["before"][:, :2])  # class + distillation tokens untouched
    assert torch.equal(seen["after"][:, 2:], learned)


@pytest.mark.parametrize("name", ["vit_tokenlearner_test", "vit_tokenlearner_test_v11", "vit_tokenlearner_mini"])
def test_tokenlearner_lowers_forward_flops(name):
    def flops(model, size):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.randn(1, 3, size, size))
        return counter.get_total_flops()

    with_tl = create_model(name, num_classes=10)
    without = getattr(vit, name)(num_classes=10, tokenlearner=None)
    assert without.tokenlearner is None
    size = with_tl.patch_embed.img_size
    f_with, f_without = flops(with_tl, size), flops(without, size)
    assert 0 < f_with < f_without
    if name == "vit_tokenlearner_mini":  # 1 of 4 blocks on 4 tokens instead of 64
        assert f_with < 0.85 * f_without


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 8, "num_tokens": 0}, "num_tokens"),
        ({"dim": 8, "num_tokens": 2, "version": "2.0"}, "version"),
        ({"dim": 10, "num_tokens": 2, "version": "1.1", "groups": 4}, "groups"),
        ({"dim": 8, "num_tokens": 2, "hidden": 0}, "hidden"),
    ],
)
def test_bad_arguments_raise_model_error(kwargs, match):
    with pytest.raises(ModelError, match=match):
        TokenLearner(**kwargs)


def test_non_square_grid_and_wrong_dim_raise():
    layer = TokenLearner(dim=8, num_tokens=2)
    with pytest.raises(ModelError, match="square"):
        layer(torch.randn(1, 12, 8))
    with pytest.raises(ModelError, match="dim 8"):
        layer(torch.randn(1, 16, 6))


def test_vit_mini_32_is_the_tokenlearner_preset_without_tokenlearner():
    with_tl = create_model("vit_tokenlearner_mini_32", num_classes=10)
    without = create_model("vit_mini_32", num_classes=10)
    assert with_tl.tokenlearner is not None and without.tokenlearner is None
    names = {n for n, _ in with_tl.named_parameters() if not n.startswith("tokenlearner.")}
    assert names == {n for n, _ in without.named_parameters()}
    assert without(torch.randn(2, 3, 32, 32)).shape == (2, 10)
