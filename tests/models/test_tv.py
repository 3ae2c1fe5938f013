"""torchvision models through create_model: head resizing, input metadata, small inputs, pretrained weights."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torch.hub
from torch import nn
from torchvision import models as tvm

from kdcache.errors import DownloadUnavailableError, ModelError
from kdcache.models import create_model, model_cfg
from kdcache.models._tv import find_head, resize_head


def test_resnet18_small_input_adapts_the_stem():
    model = create_model("resnet18", num_classes=10, small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model_cfg(model).input_size == 32
    assert model_cfg(model).kwargs == {"num_classes": 10, "small_input": True}
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_small_input_rejected_outside_the_resnet_family():
    with pytest.raises(ModelError, match="ResNet-family"):
        create_model("mobilenet_v3_small", num_classes=10, small_input=True)


@pytest.mark.parametrize(("name", "size", "interpolation"), [
    ("resnet18", 224, "bilinear"), ("efficientnet_b3", 300, "bicubic"), ("inception_v3", 299, "bilinear"),
])
def test_input_metadata_comes_from_the_weights_transforms(name, size, interpolation):
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    cfg = model_cfg(model)
    assert (cfg.input_size, cfg.interpolation) == (size, interpolation)
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406)) and cfg.std == pytest.approx((0.229, 0.224, 0.225))


def test_aux_heads_are_off_so_training_returns_plain_logits():
    with torch.device("meta"):
        model = create_model("inception_v3", num_classes=10).train()
        out = model(torch.zeros(2, 3, 299, 299))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


@pytest.mark.parametrize(("name", "head"), [
    ("resnet18", "fc"), ("mobilenet_v2", "classifier.1"), ("convnext_tiny", "classifier.2"),
    ("vit_b_16", "heads.head"), ("swin_t", "head"), ("densenet121", "classifier"),
    ("squeezenet1_1", "classifier.1"), ("shufflenet_v2_x0_5", "fc"), ("maxvit_t", "classifier.5"),
])
def test_find_and_resize_head(name, head):
    with torch.device("meta"):
        model = tvm.get_model(name, weights=None)
        assert find_head(model, num_outputs=1000)[0] == head
        resize_head(model, old_classes=1000, num_classes=7)
        size = 224
        out = model.eval()(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 7)


def test_resize_head_also_resizes_auxiliary_heads():
    with torch.device("meta"):
        model = tvm.get_model("inception_v3", weights=None, aux_logits=True, init_weights=False)
        resize_head(model, old_classes=1000, num_classes=5)
    assert model.fc.out_features == 5 and model.AuxLogits.fc.out_features == 5


def test_model_without_a_head_is_an_error():
    with pytest.raises(ModelError, match="cannot find a classifier"):
        find_head(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), num_outputs=1000)


def test_non_classification_models_and_weights_argument_are_rejected():
    with pytest.raises(ModelError, match="not an image classification model"):
        create_model("fasterrcnn_resnet50_fpn", num_classes=3)
    with pytest.raises(ModelError, match="pretrained=True"):
        create_model("resnet18", num_classes=3, weights="DEFAULT")


def test_pretrained_offline_raises_download_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: torchvision must download

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DownloadUnavailableError, match="`teacher_weights` PATH"):
        create_model("mobilenet_v3_small", num_classes=10, pretrained=True)


def test_pretrained_loads_backbone_and_replaces_head(monkeypatch, tmp_path):
    # Put "pretrained" weights where torchvision's hub cache looks, so no download happens.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = tvm.MobileNet_V3_Small_Weights.DEFAULT
    source = tvm.mobilenet_v3_small(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / weights.url.rsplit("/", 1)[-1])

    model = create_model("mobilenet_v3_small", num_classes=10, pretrained=True)
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert torch.equal(model.classifier[0].weight, source.classifier[0].weight)
    assert model.classifier[-1].out_features == 10
    assert model(torch.randn(2, 3, 64, 64).clamp(-2, 2)).shape == (2, 10)

    same = create_model("mobilenet_v3_small", num_classes=1000, pretrained=True)
    assert torch.equal(same.classifier[-1].weight, source.classifier[-1].weight)


def test_mobilenet_v2_at_32px_trains():
    model = create_model("mobilenet_v2", num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.logsumexp(1).mean().backward()
    assert model.features[0][0].weight.grad is not None


def test_pretrained_offline_through_the_cli_names_the_flag(monkeypatch, tmp_path, tiny_h5):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", tiny_h5, "--teacher", "mobilenet_v3_small",
                                   "--teacher-arg", "pretrained=true", "--out", str(tmp_path / "c.zarr"),
                                   "--size", "16", "--workers", "0", "--no-progress"])
    assert res.exit_code == 1 and "pass --teacher-weights PATH" in res.output and "Traceback" not in res.output
