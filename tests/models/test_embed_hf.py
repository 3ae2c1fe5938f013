"""Pooled embeddings of Hugging Face vision models: classifiers (``hf:DIR``) and headless encoders.

Tiny randomly initialised models saved to tmp_path (nothing downloads): the embedding is what the
classifier reads, or, without a classifier, the model's pooled output, from one forward pass.
"""

from __future__ import annotations

import pytest
import torch

from kdcache.errors import ModelError
from kdcache.models import create_model, pooled_embedder

transformers = pytest.importorskip("transformers")

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
_TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def _vit_config(**kw):
    return transformers.ViTConfig(image_size=32, patch_size=8, **_TINY, **kw)


def _count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_hf_classifier_embeds_the_class_token_its_classifier_reads(tmp_path):
    torch.manual_seed(0)
    transformers.ViTForImageClassification(_vit_config(num_labels=10)).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    model = create_model(f"hf:{tmp_path / 'vit'}", num_classes=10).eval()
    inner = model.model
    base_calls = _count_forwards(inner.vit)
    embed = pooled_embedder(model)
    assert embed.source == "the input of 'classifier'"
    with torch.no_grad():
        logits, emb = embed(X)
        assert base_calls == [1] and emb.shape == (3, 32) and logits.shape == (3, 10)
        torch.testing.assert_close(inner.classifier(emb), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, model(X), rtol=0, atol=0)
        torch.testing.assert_close(emb, inner.vit(pixel_values=X).last_hidden_state[:, 0])


def test_dinov2_classifier_embedding_is_its_class_and_mean_patch_tokens():
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(image_size=32, patch_size=8, num_labels=5, **_TINY)
    model = transformers.Dinov2ForImageClassification(cfg).eval()
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X)
        assert emb.shape == (3, 64)  # its classifier reads [CLS, mean patch token]
        torch.testing.assert_close(model.classifier(emb), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, model(pixel_values=X).logits, rtol=0, atol=0)


def test_deit_with_teacher_embeds_the_mean_of_its_two_heads_inputs():
    torch.manual_seed(0)
    cfg = transformers.DeiTConfig(image_size=32, patch_size=8, num_labels=5, **_TINY)
    model = transformers.DeiTForImageClassificationWithTeacher(cfg).eval()
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X)
        tokens = model.deit(pixel_values=X).last_hidden_state
        torch.testing.assert_close(emb, (tokens[:, 0] + tokens[:, 1]) / 2)
        torch.testing.assert_close(logits, model(pixel_values=X).logits, rtol=0, atol=0)


def test_a_saved_bare_vit_has_no_logits_and_embeds_its_class_token(tmp_path):
    torch.manual_seed(0)
    transformers.ViTModel(_vit_config(), add_pooling_layer=False).save_pretrained(tmp_path / "bare")
    model = transformers.ViTModel.from_pretrained(tmp_path / "bare", add_pooling_layer=False).eval()
    calls = _count_forwards(model)
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X)
        assert logits is None and calls == [1]
        torch.testing.assert_close(emb, model(pixel_values=X).last_hidden_state[:, 0], rtol=0, atol=0)


def test_headless_encoders_give_their_pooled_output_or_projected_embedding():
    torch.manual_seed(0)
    dino = transformers.Dinov2Model(transformers.Dinov2Config(image_size=32, patch_size=8, **_TINY)).eval()
    clip_cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=24, **_TINY)
    clip = transformers.CLIPVisionModel(clip_cfg).eval()
    clip_proj = transformers.CLIPVisionModelWithProjection(clip_cfg).eval()
    with torch.no_grad():
        for model, expected in ((dino, lambda o: o.pooler_output), (clip, lambda o: o.pooler_output),
                                (clip_proj, lambda o: o.image_embeds)):
            logits, emb = pooled_embedder(model)(X)
            assert logits is None
            torch.testing.assert_close(emb, expected(model(pixel_values=X)), rtol=0, atol=0)
    assert emb.shape == (3, 24)


def test_a_zero_label_classifier_gives_no_logits():
    model = transformers.ViTForImageClassification(_vit_config(num_labels=0)).eval()
    with torch.no_grad():
        logits, emb = pooled_embedder(model)(X)
        assert logits is None
        torch.testing.assert_close(emb, model.vit(pixel_values=X).last_hidden_state[:, 0])


def test_a_model_with_logits_but_no_known_classifier_is_refused():
    model = transformers.ViTForImageClassification(_vit_config(num_labels=4)).eval()
    model.head = model.classifier
    del model.classifier
    model.forward = lambda pixel_values: transformers.modeling_outputs.ImageClassifierOutput(
        logits=model.head(model.vit(pixel_values=pixel_values).last_hidden_state[:, 0]))
    with pytest.raises(ModelError, match=r"^model 'ViTForImageClassification' returns logits but has no "
                                         r"'classifier'"), torch.no_grad():
        pooled_embedder(model)(X)
