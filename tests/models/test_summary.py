"""The model listing: parameter counts, FLOPs, input-size override, text table."""

from __future__ import annotations

import textwrap

import pytest
import torch

from kdcache.errors import ModelError
from kdcache.models import create_model, format_table, model_table
from kdcache.models._summary import count_flops, count_params


def test_rows_for_cnn_small_and_cifar_resnet20():
    rows = model_table(["cnn_small", "cifar_resnet20"], num_classes=10)
    assert [r["name"] for r in rows] == ["cnn_small", "cifar_resnet20"]
    small, r20 = rows
    assert small["params"] == count_params(create_model("cnn_small", num_classes=10))
    assert r20["params"] == 269_722
    assert small["gflops"] > 0 and small["input_size"] == 32 and small["error"] is None
    # ResNet-20 is 40.8 M multiply-adds at 32 px; FlopCounterMode counts two FLOPs per multiply-add.
    assert r20["gflops"] == pytest.approx(2 * 40.8e6 / 1e9, rel=0.02)
    assert set(r20["tags"]) == {"teacher", "student"} and "ResNet-20" in r20["description"]


def test_meta_count_equals_a_real_forward_count():
    model = create_model("cnn_small", num_classes=10)
    real = count_flops(model, input_size=32) / 1e9
    assert model_table(["cnn_small"], num_classes=10)[0]["gflops"] == pytest.approx(real, rel=1e-9)


def test_input_size_override_scales_flops():
    base, = model_table(["cifar_resnet20"], num_classes=10)
    big, = model_table(["cifar_resnet20"], num_classes=10, input_size=64)
    assert big["input_size"] == 64
    # Convolutions dominate and scale with the pixel count; the head does not.
    assert big["gflops"] == pytest.approx(4 * base["gflops"], rel=0.01)


def test_torchvision_names_and_models_whose_builder_needs_real_data():
    # regnet computes its widths with .tolist() in the constructor, so it cannot be built on "meta".
    row, = model_table(["regnet_x_400mf"])
    assert row["params"] == 5_495_976 and row["gflops"] == pytest.approx(0.83, rel=0.05)
    assert row["tags"] == [] and row["input_size"] == 224


def test_model_rejecting_the_input_size_is_reported_not_raised(tmp_path, monkeypatch):
    (tmp_path / "fixed_size_model.py").write_text(textwrap.dedent("""
        import torch
        from kdcache.models import set_model_cfg

        class Fixed(torch.nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.fc = torch.nn.Linear(3 * 16 * 16, num_classes)

            def forward(self, x):
                if x.shape[-1] != 16:
                    raise ValueError(f"expected 16 px input, got {x.shape[-1]}")
                return self.fc(x.flatten(1))

        def build(*, num_classes):
            return set_model_cfg(Fixed(num_classes), input_size=16)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ok, bad = (model_table(["python:fixed_size_model:build"], num_classes=3, input_size=s)[0] for s in (None, 32))
    assert ok["gflops"] == pytest.approx(2 * 768 * 3 / 1e9) and ok["error"] is None
    assert bad["gflops"] is None and "expected 16 px input, got 32" in bad["error"]
    assert "expected 16 px input" in format_table([ok, bad])


def test_format_table_aligns_columns():
    rows = model_table(["cnn_tiny", "cifar_resnet56"], num_classes=10)
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["model", "params", "GFLOPs", "input"]
    assert set(lines[1]) <= {"-", " "}
    # Right-aligned numeric columns end at the same offset on every line.
    end = lines[0].index("input") + len("input")
    assert all(line[end - 2:end] == "32" for line in lines[2:])
    assert "cifar_resnet56" in lines[3] and "0.85M" in lines[3]


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_bad_input_size(size):
    with pytest.raises(ModelError, match="input_size"):
        model_table(["cnn_tiny"], input_size=size)


def test_unknown_name_propagates():
    with pytest.raises(ModelError, match="unknown model"):
        model_table(["no_such_net"])


def test_count_flops_restores_training_mode():
    model = create_model("cnn_tiny", num_classes=2).train()
    count_flops(model, input_size=32)
    assert model.training
    x = torch.zeros(1, 3, 32, 32)
    assert model(x).shape == (1, 2)
