"""The small CNNs of the offline quickstart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import ModelError
from kdcache.models import create_model, list_models, model_cfg
from kdcache.models._summary import count_params


@pytest.mark.parametrize("name", ["cnn_small", "cnn_tiny"])
def test_registered_as_student_and_teacher(name):
    assert name in list_models("student") and name in list_models("teacher")


@pytest.mark.parametrize("name", ["cnn_small", "cnn_tiny"])
def test_forward_split_and_cfg(name):
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[:2] == (3, model.num_features) and feats.shape[2:] == (8, 8)
    assert model.forward_head(feats, pre_logits=True).shape == (3, model.num_features)
    assert torch.equal(model(x), model.forward_head(feats))
    cfg = model_cfg(model)
    assert (cfg.input_size, cfg.mean, cfg.std) == (32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert cfg.name == name and cfg.kwargs == {"num_classes": 10}


def test_width_option_scales_channels():
    narrow = create_model("cnn_small", num_classes=10, width=8)
    wide = create_model("cnn_small", num_classes=10, width=32)
    assert (narrow.num_features, wide.num_features) == (32, 128)
    assert count_params(wide) > 10 * count_params(narrow)
    assert model_cfg(wide).kwargs == {"num_classes": 10, "width": 32}


def test_tiny_is_smaller_than_small():
    assert count_params(create_model("cnn_tiny", num_classes=10)) < count_params(
        create_model("cnn_small", num_classes=10)) / 2


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -4}, {"dropout": 1.0}])
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ModelError):
        create_model("cnn_small", num_classes=10, **kwargs)


def test_cnn_small_fits_a_small_labelled_batch():
    # Eight classes of distinct per-class patterns plus noise: a working CNN separates them in a few steps.
    gen = torch.Generator().manual_seed(1)
    prototypes = torch.randn(8, 3, 32, 32, generator=gen)
    y = torch.arange(64) % 8
    x = prototypes[y] + 0.5 * torch.randn(64, 3, 32, 32, generator=gen)
    model = create_model("cnn_small", num_classes=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
