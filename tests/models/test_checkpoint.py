"""Checkpoints: round trips (.pt and .safetensors), weights-only loading, clear errors."""

from __future__ import annotations

import dataclasses
from urllib.error import URLError

import pytest
import torch
import torch.hub

from kdcache.errors import CheckpointError, ModelError
from kdcache.models import _checkpoint as ckpt_mod
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
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_weights(model, tmp_path / "junk.pt")
    (tmp_path / "damaged.pt").write_bytes(b"\x80\x02e" + b"\x00" * 32)  # a pickle header, then garbage
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(model, tmp_path / "damaged.pt")
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


# --- weights from anywhere: text files, safetensors, checkpoint directories, helpful mismatches ---------

@pytest.mark.parametrize("text", ["e: notes about the teacher\n", "hello\n", "", "PK but not a zip"])
def test_a_text_file_as_weights_is_a_one_line_error(tmp_path, text):
    (tmp_path / "notes.txt").write_text(text)
    with pytest.raises(CheckpointError) as info:
        load_weights(create_model("cnn_tiny", num_classes=5), tmp_path / "notes.txt")
    assert "\n" not in str(info.value) and "notes.txt" in str(info.value)


@pytest.mark.parametrize("name", ["w.safetensors", "w.bin"])
def test_safetensors_weights_load_whatever_the_suffix(tmp_path, name):
    from safetensors.torch import save_file

    source = _trained_like()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / name)
    target = create_model("cnn_small", num_classes=5)
    load_weights(target, tmp_path / name)
    assert _same_outputs(source, target)


@pytest.mark.parametrize(("safe", "weights_file"), [(True, "model.safetensors"), (False, "pytorch_model.bin")])
def test_timm_checkpoint_directory(tmp_path, safe, weights_file):
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    source = create_model("timm:resnet18", num_classes=5)
    # What timm pushes to the Hub: config.json and the weights.
    save_for_hf(source, tmp_path / "timm-resnet18", safe_serialization=safe)
    assert (tmp_path / "timm-resnet18" / weights_file).is_file()
    target = create_model("timm:resnet18", num_classes=5)
    load_weights(target, tmp_path / "timm-resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))
    assert timm is not None


def test_pytorch_model_bin_directory_and_directories_without_weights(tmp_path):
    source = _trained_like()
    (tmp_path / "ckpt").mkdir()
    torch.save(source.state_dict(), tmp_path / "ckpt" / "pytorch_model.bin")
    target = create_model("cnn_small", num_classes=5)
    load_weights(target, tmp_path / "ckpt")
    assert _same_outputs(source, target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="directory without model.safetensors or pytorch_model.bin"):
        load_weights(target, tmp_path / "empty")


@pytest.mark.parametrize(("transform", "hint"), [
    (lambda k: f"model.{k}", "the file's keys carry a 'model.' prefix the model's lack: strip it"),
    (lambda k: k.split(".", 1)[1] if k.startswith("model.") else k, "model's keys start with 'model.'"),
])
def test_a_key_prefix_mismatch_names_the_prefix(tmp_path, transform, hint):
    pytest.importorskip("transformers")
    from kdcache.models._hf import HFImageClassifier

    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    model = HFImageClassifier(inner) if "start with" in hint else inner
    torch.save({transform(k): v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(model, tmp_path / "w.pt")
    msg = str(info.value)
    assert "missing keys: " in msg and "unexpected keys: " in msg and hint in msg


def test_a_head_of_another_size_is_named_with_its_shapes(tmp_path):
    torch.save(create_model("cnn_small", num_classes=10).state_dict(), tmp_path / "w10.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(create_model("cnn_small", num_classes=5), tmp_path / "w10.pt")
    msg = str(info.value)
    assert "fc.weight (10, 64) vs model (5, 64)" in msg
    assert "a head for 10 outputs but the model's has 5" in msg and "num_classes=10" in msg
