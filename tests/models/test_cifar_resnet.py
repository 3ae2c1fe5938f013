"""CIFAR ResNets: architecture, option-A shortcut, and the public akamaster checkpoints."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import CheckpointError, ModelError
from kdcache.models import create_model, load_weights, model_cfg
from kdcache.models._cifar_resnet import BasicBlock, CifarResNet
from kdcache.models._summary import count_params

# Parameter counts published with the checkpoints (10 classes), see /work/shared/weights/README.md.
PUBLISHED_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}
CHECKPOINTS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
               56: "resnet56-4bfd9763.th"}


@pytest.mark.parametrize("depth", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_published_models(depth):
    assert count_params(create_model(f"cifar_resnet{depth}", num_classes=10)) == PUBLISHED_PARAMS[depth]


def test_resnet110_has_18_blocks_per_stage():
    model = create_model("cifar_resnet110", num_classes=10)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 18


def test_shapes_and_cfg():
    model = create_model("cifar_resnet20", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
    assert torch.equal(model(x), model.forward_head(feats))
    cfg = model_cfg(model)
    assert (cfg.input_size, cfg.mean, cfg.std) == (32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_option_a_shortcut_subsamples_and_zero_pads_symmetrically():
    block = BasicBlock(in_planes=16, planes=32, stride=2)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize("depth", [0, 19, 21])
def test_bad_depth_is_rejected(depth):
    with pytest.raises(ModelError, match="6n\\+2"):
        CifarResNet(depth=depth, num_classes=10)


@pytest.mark.parametrize("depth", sorted(CHECKPOINTS))
def test_shared_checkpoints_load_strictly(shared_weights, depth):
    model = create_model(f"cifar_resnet{depth}", num_classes=10)
    before = model.linear.weight.clone()
    load_weights(model, shared_weights / CHECKPOINTS[depth])
    raw = torch.load(shared_weights / CHECKPOINTS[depth], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.linear.weight, raw["module.linear.weight"])
    assert not torch.equal(model.linear.weight, before)


def test_shared_checkpoint_with_a_missing_weight_is_refused(shared_weights, tmp_path):
    raw = torch.load(shared_weights / CHECKPOINTS[20], map_location="cpu", weights_only=True)
    del raw["state_dict"]["module.layer2.0.conv1.weight"]
    torch.save(raw, tmp_path / "broken.th")
    with pytest.raises(CheckpointError, match="missing keys: layer2.0.conv1.weight"):
        load_weights(create_model("cifar_resnet20", num_classes=10), tmp_path / "broken.th")


@pytest.mark.slow
def test_resnet20_accuracy_on_shared_cifar10(shared_cifar, shared_weights):
    """The published ResNet-20 reproduces its accuracy measured on the shared test split (81.0, ../shared/weights;
    the smallest of the four: every depth shares the blocks and shortcut this checks)."""
    model = create_model("cifar_resnet20", num_classes=10)
    load_weights(model, shared_weights / CHECKPOINTS[20])
    model.eval()
    cfg = model_cfg(model)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    correct = total = 0
    with h5py.File(shared_cifar, "r") as f, torch.inference_mode():
        images, labels = f["test/images"], f["test/labels"]
        assert images.shape == (10_000, 32, 32, 3)
        for start in range(0, images.shape[0], 500):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + 500]))
            x = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            pred = model(x).argmax(1)
            correct += int((pred == torch.from_numpy(labels[start:start + 500])).sum())
            total += len(pred)
    accuracy = 100.0 * correct / total
    assert total == 10_000
    assert abs(accuracy - 81.0) <= 0.5, accuracy


def test_trains_on_a_tiny_batch():
    model = create_model("cifar_resnet20", num_classes=4)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
