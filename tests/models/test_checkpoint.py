"""Checkpoints: round trips (.pt and .safetensors), weights-only loading, clear errors."""

from __future__ import annotations

import dataclasses
from urllib.error import URLError

import pytest
import torch
import torch.hub

from kdcache.errors import CheckpointError, ModelError
from kdcache.models import checkpoint as ckpt_mod
from kdcache.models import create_model, load_checkpoint, load_weights, model_cfg, save_checkpoint


def _trained_like(name: str = "cnn_small", **kw):
    """A model whose BN statistics and weights differ from a fresh build."""
    model = create_model(name, num_classes=5, **kw)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def _same_outputs(a, b) -> bool:
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_pt_round_trip_restores_model_cfg_and_extras(tmp_path):
    model = _trained_like(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    extra = {"config": {"lr": 0.1, "views": [1, 2]}, "optimizer": opt.state_dict(), "epoch": 3,
             "metrics": {"top1": 91.5}}
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, **extra)
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]

    loaded, got = load_checkpoint(path)
    assert _same_outputs(model, loaded)
    assert model_cfg(loaded) == model_cfg(model)
    assert model_cfg(loaded).kwargs == {"num_classes": 5, "width": 8}
    assert got["epoch"] == 3 and got["config"] == extra["config"] and got["metrics"] == {"top1": 91.5}
    restored = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(got["optimizer"])
    assert restored.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_safetensors_round_trip(tmp_path):
    model = _trained_like("cifar_resnet20")
    path = save_checkpoint(tmp_path / "model.safetensors", model, epoch=7, config={"lr": 0.05})
    loaded, extra = load_checkpoint(path)
    assert _same_outputs(model, loaded)
    assert model_cfg(loaded) == model_cfg(model)
    assert extra == {"epoch": 7, "config": {"lr": 0.05}}
    target = create_model("cifar_resnet20", num_classes=5)
    load_weights(target, path)
    assert _same_outputs(model, target)


def test_safetensors_refuses_non_json_extras(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "m.safetensors", _trained_like(), optimizer={"t": torch.zeros(2)})
    assert not list(tmp_path.iterdir())


class _Arbitrary:
    pass


def test_extras_must_be_plain_data(tmp_path):
    with pytest.raises(CheckpointError, match="'args'.*_Arbitrary"):
        save_checkpoint(tmp_path / "m.pt", _trained_like(), args={"ns": _Arbitrary()})
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "m.pt", _trained_like(), state_dict={})
    assert not list(tmp_path.iterdir())


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    model = _trained_like()
    save_checkpoint(path, model, epoch=1)
    good = path.read_bytes()

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_model_without_cfg_cannot_be_saved(tmp_path):
    with pytest.raises(ModelError, match="not built by kdcache"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "model_state", "module_prefix"])
def test_load_weights_accepts_common_layouts(tmp_path, layout):
    source = _trained_like()
    sd = source.state_dict()
    obj = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 4},
        "model": {"model": sd, "optimizer": {}},
        "model_state": {"model_state": sd},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 1.0},
    }[layout]
    torch.save(obj, tmp_path / "w.pth")
    target = create_model("cnn_small", num_classes=5)
    assert not _same_outputs(source, target)
    load_weights(target, tmp_path / "w.pth")
    assert _same_outputs(source, target)


def test_load_weights_reports_missing_unexpected_and_shape_mismatches(tmp_path):
    sd = _trained_like().state_dict()
    del sd["stages.0.0.0.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["fc.weight"] = torch.zeros(3, 64)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(create_model("cnn_small", num_classes=5), tmp_path / "w.pt")
    msg = str(info.value)
    assert "missing keys: stages.0.0.0.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "fc.weight (3, 64) vs model (5, 64)" in msg


def test_missing_key_list_is_truncated(tmp_path):
    torch.save({"only.weight": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"\(\+\d+ more\)"):
        load_weights(create_model("cifar_resnet20", num_classes=10), tmp_path / "w.pt")


def test_bad_files(tmp_path):
    model = create_model("cnn_tiny", num_classes=5)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(model, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(model, tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_weights(model, tmp_path / "junk.safetensors")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_weights(model, tmp_path / "no_weights.pt")


def test_never_unpickles_arbitrary_objects(tmp_path):
    torch.save({"state_dict": create_model("cnn_tiny", num_classes=5).state_dict(), "args": _Arbitrary()},
               tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="Unsupported global.*_Arbitrary.*never unpickles"):
        load_weights(create_model("cnn_tiny", num_classes=5), tmp_path / "pickled.pt")


def test_load_checkpoint_needs_a_kdcache_checkpoint(tmp_path):
    torch.save(create_model("cnn_tiny", num_classes=5).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a kdcache checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    model = create_model("cnn_tiny", num_classes=5)
    save_checkpoint(tmp_path / "future.pt", model)
    raw = torch.load(tmp_path / "future.pt", weights_only=True)
    raw["kdcache_checkpoint"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="upgrade kdcache"):
        load_checkpoint(tmp_path / "future.pt")


def test_load_checkpoint_never_downloads_pretrained_weights_again(tmp_path, monkeypatch):
    model = create_model("mobilenet_v3_small", num_classes=4)
    # As if it had been built with pretrained=True and fine-tuned.
    model.kdcache_cfg = dataclasses.replace(model_cfg(model), kwargs={"num_classes": 4, "pretrained": True})
    save_checkpoint(tmp_path / "teacher.pt", model)

    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    loaded, _ = load_checkpoint(tmp_path / "teacher.pt")
    assert model_cfg(loaded).kwargs["pretrained"] is True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_map_location_moves_the_model(tmp_path):
    save_checkpoint(tmp_path / "m.pt", create_model("cnn_tiny", num_classes=5))
    loaded, _ = load_checkpoint(tmp_path / "m.pt", map_location="meta")
    assert next(loaded.parameters()).device.type == "meta"
