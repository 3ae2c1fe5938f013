"""BiT ResNet-V2: GroupNorm, weight standardisation, big_transfer module names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcache.errors import ModelError
from kdcache.models import create_model, list_models, model_cfg
from kdcache.models._bit import ResNetV2, StdConv2d
from kdcache.models._summary import count_params


def test_registered_teachers():
    assert {"bit_resnet50x1", "bit_resnet101x1", "bit_resnet50x3", "bit_resnet_test"} <= set(list_models("teacher"))


@pytest.mark.parametrize(("name", "expected"), [
    # ImageNet-1k head; the same counts as timm's resnetv2_*_bit models.
    ("bit_resnet50x1", 25_549_352), ("bit_resnet101x1", 44_541_480), ("bit_resnet50x3", 217_319_080),
])
def test_full_size_parameter_counts(name, expected):
    with torch.device("meta"):  # no memory, no init cost
        model = create_model(name, num_classes=1000)
    assert count_params(model) == expected
    assert model_cfg(model).input_size == 224 and model_cfg(model).mean == (0.5, 0.5, 0.5)


def test_test_variant_forward_backward():
    model = create_model("bit_resnet_test", num_classes=5)
    size = model_cfg(model).input_size
    x = torch.randn(2, 3, size, size)
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, model.num_features)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 3 * 4 + 1


def test_big_transfer_state_dict_names():
    keys = set(create_model("bit_resnet_test", num_classes=3).state_dict())
    assert {"root.conv.weight", "body.block1.unit01.gn1.weight", "body.block1.unit01.conv3.weight",
            "body.block1.unit01.downsample.weight", "body.block4.unit01.downsample.weight",
            "head.gn.weight", "head.conv.weight", "head.conv.bias"} <= keys


def test_weight_standardisation_ignores_filter_scale_and_shift():
    conv = StdConv2d(4, 6, kernel_size=3, padding=1, bias=False)
    x = torch.randn(2, 4, 5, 5)
    before = conv(x)
    with torch.no_grad():
        scale = torch.rand(6, 1, 1, 1) + 0.5
        conv.weight.mul_(scale).add_(torch.randn(6, 1, 1, 1))
    torch.testing.assert_close(conv(x), before, rtol=1e-4, atol=1e-4)
    plain = nn.functional.conv2d(x, conv.weight, padding=1)
    assert not torch.allclose(plain, before, atol=1e-2)


def test_zero_head_outputs_zero_logits():
    model = create_model("bit_resnet_test", num_classes=4, zero_head=True).eval()
    assert not model(torch.randn(1, 3, 64, 64)).any()


def test_bad_arguments():
    with pytest.raises(ModelError, match="four"):
        ResNetV2(num_classes=10, layers=(1, 1, 1))
    with pytest.raises(ModelError, match="divisible"):
        ResNetV2(num_classes=10, layers=(1, 1, 1, 1), stem_width=20, base_width=8, gn_groups=8)
