"""Pooled embeddings (timm's pre-logits) of kdcache, timm, torchvision and python: models, in one forward pass.

The embedding must be exactly what the classifier reads: the head applied to it gives the logits, and the
logits are the model's own output. Models are tiny and randomly initialised; nothing downloads.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from kdcache.errors import ModelError
from kdcache.models import create_model, pooled_embedder

X32 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

# each registered model's classifier, applied to its pooled embedding
KDCACHE_HEADS = {
    "cifar_resnet20": lambda m, e: m.linear(e),
    "cnn_tiny": lambda m, e: m.fc(e),
    "deit_test": lambda m, e: m.head(e),
    "vit_tokenlearner_test": lambda m, e: m.head(e),
    "keras_tokenlearner_vit_test": lambda m, e: m.head(e),
    "bit_resnet_test": lambda m, e: m.head.conv(e[:, :, None, None]).flatten(1),
}


def _count_calls(monkeypatch, model: nn.Module, method: str) -> list[int]:
    """Count calls of ``model.<method>`` (patched on the instance)."""
    calls = [0]
    original = getattr(model, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model, method, counted)
    return calls


def _input(name: str) -> torch.Tensor:
    size = {"keras_tokenlearner_vit_test": 16, "bit_resnet_test": 64}.get(name, 32)
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", sorted(KDCACHE_HEADS))
def test_kdcache_models_embed_their_head_input_in_one_forward(monkeypatch, name):
    model = create_model(name, num_classes=7).eval()
    x = _input(name)
    embed = pooled_embedder(model)
    assert embed.source == "forward_head(pre_logits=True)"
    calls = _count_calls(monkeypatch, model, "forward_features")
    with torch.no_grad():
        logits, emb = embed(x)
        assert calls == [1]
        assert emb.shape == (2, model.num_features)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
        torch.testing.assert_close(KDCACHE_HEADS[name](model, emb), logits, rtol=1e-5, atol=1e-5)


def test_kdcache_distilled_deit_embeds_the_mean_of_its_class_and_distillation_tokens():
    model = create_model("deit_test_distilled", num_classes=7).eval()
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X32)
        tokens = model.forward_features(X32)
        torch.testing.assert_close(emb, (tokens[:, 0] + tokens[:, 1]) / 2, rtol=0, atol=0)
        torch.testing.assert_close(logits, model(X32), rtol=0, atol=0)
        # eval logits average the two heads over the two tokens: the embedding is their common input's mean
        torch.testing.assert_close(logits, (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2)


def test_vit_forward_head_pre_logits_pools_as_the_head_does():
    """The one-line addition to kdcache's ViT: pre_logits gives the class token / the mean patch token."""
    for name, pooled in (("deit_test", lambda t: t[:, 0]), ("vit_tokenlearner_test", lambda t: t.mean(dim=1))):
        model = create_model(name, num_classes=5).eval()
        with torch.no_grad():
            tokens = model.forward_features(X32)
            torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), pooled(tokens))


timm = pytest.importorskip("timm")


def test_timm_resnet_embeds_pre_logits_in_one_forward(monkeypatch):
    model = create_model("timm:resnet18", num_classes=10).eval()
    calls = _count_calls(monkeypatch, model, "forward_features")
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X32)
        assert calls == [1] and emb.shape == (3, 512) and logits.shape == (3, 10)
        torch.testing.assert_close(model.fc(emb), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, model(X32), rtol=0, atol=0)
        torch.testing.assert_close(emb, model.forward_head(model.forward_features(X32), pre_logits=True))


def test_timm_distilled_deit_follows_timm_pre_logits():
    model = create_model("timm:deit_tiny_distilled_patch16_224", num_classes=10, img_size=32, patch_size=8,
                         depth=1).eval()
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X32)
        tokens = model.forward_features(X32)
        torch.testing.assert_close(emb, (tokens[:, 0] + tokens[:, 1]) / 2, rtol=0, atol=0)
        torch.testing.assert_close(logits, model(X32), rtol=0, atol=0)


def test_timm_model_without_classifier_gives_no_logits():
    model = timm.create_model("resnet18", num_classes=0).eval()  # timm's headless model: features only
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X32)
    assert logits is None and emb.shape == (3, 512)


def test_embedding_keeps_gradients_for_a_student():
    model = create_model("cifar_resnet20", num_classes=10).train()
    _, emb = pooled_embedder(model)(X32)
    emb.pow(2).sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize(("name", "head"), [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_torchvision_embeds_the_input_of_its_classifier(name, head):
    model = create_model(name, num_classes=10).eval()
    linear = model.get_submodule(head)
    forwards = [0]
    model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    embed = pooled_embedder(model)
    assert embed.source == f"the input of {head!r}"
    with torch.no_grad():
        logits, emb = embed(X32)
        assert forwards == [1] and emb.shape == (3, linear.in_features)
        torch.testing.assert_close(linear(emb), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, model(X32), rtol=0, atol=0)
    assert not linear._forward_pre_hooks  # the capture hook is gone after the call


def test_torchvision_head_that_runs_twice_is_refused(monkeypatch):
    model = create_model("resnet18", num_classes=10).eval()
    monkeypatch.setattr(model, "forward", lambda x: tvm.ResNet.forward(model, x) + tvm.ResNet.forward(model, x))
    with pytest.raises(ModelError, match=r"'resnet18': 'fc' ran \[2\] times"), torch.no_grad():
        pooled_embedder(model)(X32)


def test_torchvision_convolution_head_has_no_pooled_embedding():
    model = create_model("squeezenet1_1", num_classes=10)
    with pytest.raises(ModelError, match=r"^model 'squeezenet1_1': its classifier 'classifier.1' is a Conv2d"):
        pooled_embedder(model)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "embed_user_models.py").write_text(textwrap.dedent("""
        import torch

        class WithHook(torch.nn.Module):
            def __init__(self, num_classes, dim=6):
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, dim))
                self.fc = torch.nn.Linear(dim, num_classes)

            def forward(self, x):
                return self.fc(self.body(x))

            def forward_embedding(self, x):
                emb = self.body(x)
                return self.fc(emb), emb

        class BadHook(WithHook):
            def forward_embedding(self, x):
                return None, self.body(x)[:, :, None]

        def with_hook(*, num_classes):
            return WithHook(num_classes)

        def bad_hook(*, num_classes):
            return BadHook(num_classes)

        def plain(*, num_classes):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "embed_user_models"
    sys.modules.pop("embed_user_models", None)


def test_python_model_uses_its_forward_embedding_hook(user_module):
    model = create_model(f"python:{user_module}:with_hook", num_classes=4)
    x = torch.randn(2, 3, 8, 8)
    embed = pooled_embedder(model)
    assert embed.source == "forward_embedding(x)"
    logits, emb = embed(x)
    assert emb.shape == (2, 6)
    torch.testing.assert_close(logits, model(x))


def test_python_model_without_the_hook_is_one_line_naming_what_to_add(user_module):
    name = f"python:{user_module}:plain"
    with pytest.raises(ModelError) as e:
        pooled_embedder(create_model(name, num_classes=4))
    assert str(e.value).startswith(f"model {name!r} has no embedding hook: define forward_embedding(self, x)")
    assert "\n" not in str(e.value)


def test_a_hook_returning_a_non_vector_embedding_is_refused(user_module):
    model = create_model(f"python:{user_module}:bad_hook", num_classes=4)
    with pytest.raises(ModelError, match=r"must be \(batch, dim\) = \(2, D\), got \(2, 6, 1\)"):
        pooled_embedder(model)(torch.randn(2, 3, 8, 8))


def test_a_module_with_no_embedding_is_refused_by_name():
    with pytest.raises(ModelError, match=r"^model 'Sequential': cannot find a pooled embedding; give it "):
        pooled_embedder(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
