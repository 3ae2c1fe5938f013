"""DeiT: the distillation token and head belong to the student; two heads in training, their mean in eval."""

from __future__ import annotations

import pytest
import torch

from kdcache.errors import ModelError
from kdcache.models import create_model, list_models, model_cfg


def test_distilled_returns_two_heads_in_train_and_their_average_in_eval():
    model = create_model("deit_test_distilled", num_classes=6)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    cls_logits, dist_logits = out
    assert cls_logits.shape == dist_logits.shape == (4, 6)
    assert not torch.allclose(cls_logits, dist_logits)  # separate tokens, separate heads

    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (4, 2 + 16, 32)  # class + distillation token + 4x4 grid
        expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        averaged = model(x)
        train_heads = model.train()(x)  # no dropout in this preset: same numbers as eval
    assert isinstance(averaged, torch.Tensor)
    torch.testing.assert_close(averaged, expected)
    torch.testing.assert_close(averaged, (train_heads[0] + train_heads[1]) / 2)


def test_plain_deit_returns_one_tensor_in_training():
    model = create_model("deit_test", num_classes=3).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    assert "head_dist.weight" not in model.state_dict() and model.dist_token is None


def test_saved_student_keeps_distillation_token_and_head(tmp_path):
    model = create_model("deit_test_distilled", num_classes=5)
    state = model.state_dict()
    for key in ("dist_token", "head_dist.weight", "head_dist.bias", "cls_token", "pos_embed"):
        assert key in state
    assert state["pos_embed"].shape == (1, 2 + 16, 32)
    torch.save(state, tmp_path / "student.pt")
    fresh = create_model("deit_test_distilled", num_classes=5)
    fresh.load_state_dict(torch.load(tmp_path / "student.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
        fresh.train(), model.train()
        for a, b in zip(fresh(x), model(x)):
            assert torch.equal(a, b)


def test_cifar_distilled_deit_on_32px():
    model = create_model("deit_tiny_patch4_32_distilled", num_classes=10)
    assert model_cfg(model).input_size == 32
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (192, 12, 3)
    x = torch.randn(2, 3, 32, 32)
    cls_logits, dist_logits = model.train()(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    with torch.no_grad():
        eval_logits = model.eval()(x)
    assert eval_logits.shape == (2, 10) and torch.isfinite(eval_logits).all()


@pytest.mark.parametrize(
    "name, params",
    [  # parameter counts of the published DeiT models (1000 classes), as timm reports them
        ("deit_tiny_patch16_224", 5_717_416),
        ("deit_small_patch16_224", 22_050_664),
        ("deit_tiny_patch16_224_distilled", 5_910_800),
    ],
)
def test_imagenet_presets_match_published_sizes(name, params):
    model = create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model_cfg(model).input_size == 224
    assert model_cfg(model).mean == (0.485, 0.456, 0.406)


def test_every_deit_preset_is_registered_with_a_distilled_twin():
    names = set(list_models())
    for base in ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
                 "deit_tiny_patch4_32", "deit_test"):
        assert base in names and f"{base}_distilled" in names
    assert "deit_base_patch16_224" in list_models("teacher")
    assert "deit_tiny_patch4_32_distilled" in list_models("student")


def test_distilled_needs_token_pooling():
    with pytest.raises(ModelError, match="distill"):
        create_model("deit_test_distilled", num_classes=2, global_pool="avg")
    with pytest.raises(ModelError, match="class_token"):
        create_model("deit_test_distilled", num_classes=2, class_token=False)


def test_deit_mini_of_the_readme_tables_is_registered():
    """The README's DeiT-mini by name: DeiT-Ti's layout at 96 wide and 6 blocks, no --student-arg needed."""
    import torch

    from kdcache.models import create_model

    torch.manual_seed(0)
    mini = create_model("deit_mini_patch4_32_distilled", num_classes=10)
    torch.manual_seed(0)
    by_args = create_model("deit_tiny_patch4_32_distilled", num_classes=10, embed_dim=96, depth=6, num_heads=3)
    assert sum(p.numel() for p in mini.parameters()) == 684404
    assert all(torch.equal(a, b) for a, b in zip(mini.state_dict().values(), by_args.state_dict().values()))
    assert create_model("deit_mini_patch4_32", num_classes=10).dist_token is None
