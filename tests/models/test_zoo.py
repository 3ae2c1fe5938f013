"""Every registered model trains: forward + backward in training mode, logits in eval mode.

Models too big for a CPU unit test (by parameters or FLOPs, measured with ``model_table`` on the
``meta`` device) are skipped; each family has a cheap ``*_test`` or small variant that runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcache.models import create_model, list_models, model_cfg, model_table

MAX_PARAMS = 2_000_000
MAX_GFLOPS = 0.6
NUM_CLASSES = 10


def _train_and_eval_step(model: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    y = torch.tensor([1, 7])
    model.train()
    out = model(x)
    # A distilled student returns (class logits, distillation logits) in training mode.
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert o.shape == (2, NUM_CLASSES) and torch.isfinite(o).all()
    sum(F.cross_entropy(o, y) for o in outs).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


def test_the_zoo_has_cheap_members():
    cheap = [n for n in list_models() if n.endswith("_test") or n in ("cnn_small", "cnn_tiny", "cifar_resnet20")]
    assert {"cnn_small", "cnn_tiny", "cifar_resnet20", "bit_resnet_test"} <= set(cheap)


@pytest.mark.parametrize("name", list_models())
def test_registered_model_forward_backward(name):
    row, = model_table([name], num_classes=NUM_CLASSES)
    if row["gflops"] is None or row["params"] > MAX_PARAMS or row["gflops"] > MAX_GFLOPS:
        gflops = "?" if row["gflops"] is None else f"{row['gflops']:.2f}"
        pytest.skip(f"{name}: {row['params'] / 1e6:.1f} M params, {gflops} GFLOPs - too big for a CPU "
                    "unit test; its small/_test variant covers the architecture")
    model = create_model(name, num_classes=NUM_CLASSES)
    _train_and_eval_step(model, model_cfg(model).input_size)


@pytest.mark.parametrize(("name", "kwargs"), [("resnet18", {"small_input": True}), ("mobilenet_v2", {})])
def test_torchvision_students_at_32px(name, kwargs):
    model = create_model(name, num_classes=NUM_CLASSES, **kwargs)
    _train_and_eval_step(model, 32)
