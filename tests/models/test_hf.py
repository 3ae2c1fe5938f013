"""Hugging Face ``transformers`` image classifiers through ``hf:DIR`` (tiny random ViTs saved to tmp_path).

Only local directories are used: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, build_teacher, dump_teacher
from kdcache.engine._verify import verify_cache
from kdcache.errors import CacheMismatchError, ModelError
from kdcache.models import create_model, load_checkpoint, model_cfg, save_checkpoint

transformers = pytest.importorskip("transformers")

NUM_CLASSES = 10  # the digits dataset
DATA = DataConfig(source="digits", limit=8)


def save_tiny_vit(path, *, num_labels: int = NUM_CLASSES, processor=None, seed: int = 0) -> str:
    """A randomly initialised 1-block ViT for 32 px input with its image processor, via save_pretrained."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
    transformers.ViTForImageClassification(config).save_pretrained(path)
    (processor or transformers.ViTImageProcessor(size={"height": 32, "width": 32})).save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_vit(tmp_path) -> str:
    return save_tiny_vit(tmp_path / "vit")


def test_hf_model_returns_logits_and_takes_its_processor_as_model_cfg(tiny_vit):
    model = create_model(f"hf:{tiny_vit}", num_classes=NUM_CLASSES)
    cfg = model_cfg(model)
    assert (cfg.name, cfg.kwargs) == (f"hf:{tiny_vit}", {"num_classes": NUM_CLASSES})
    assert (cfg.input_size, cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct) == (
        32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0)
    x = torch.randn(2, 3, 32, 32)
    reference = transformers.AutoModelForImageClassification.from_pretrained(tiny_vit).eval()
    model.eval()
    with torch.inference_mode():
        logits = model(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
        assert torch.equal(logits, reference(pixel_values=x).logits)  # the saved weights, not a fresh init
    out = model.train()(x)
    assert isinstance(out, torch.Tensor)
    out.sum().backward()


def test_a_centre_crop_processor_sets_crop_pct_and_resampling(tmp_path):
    processor = transformers.DeiTImageProcessor(size={"height": 40, "width": 40}, do_center_crop=True,
                                                crop_size={"height": 32, "width": 32}, resample=3,
                                                image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    cfg = model_cfg(create_model(f"hf:{save_tiny_vit(tmp_path / 'deit', processor=processor)}",
                                 num_classes=NUM_CLASSES))
    assert (cfg.input_size, cfg.crop_pct, cfg.interpolation) == (32, 0.8, "bicubic")
    assert cfg.mean == pytest.approx((0.4, 0.5, 0.6)) and cfg.std == pytest.approx((0.2, 0.3, 0.4))


def test_hf_teacher_dump_replays_exactly_and_verifies(tmp_path, tiny_vit):
    teacher = TeacherSpec(name=f"hf:{tiny_vit}")
    out = str(tmp_path / "cache.zarr")
    dump_teacher(DumpConfig(data=DATA, out=out, teacher=teacher, views=2, seed=3, batch_size=4, workers=0,
                            block_size=4, device="cpu"), progress=False, log=lambda _m: None)
    store = CacheStore.open(out)
    assert store.identity.view_spec["size"] == 32 and store.identity.view_spec["mean"] == [0.5, 0.5, 0.5]
    report = verify_cache(out, teacher, DATA, samples=16, batch_size=4, device="cpu")
    assert report["ok"], report["failures"]
    assert report["samples_checked"] == 16 and report["coverage"] == 1.0


def test_other_weights_in_the_same_directory_fail_verification(tmp_path, tiny_vit):
    """Guards the test above: verify_cache does notice a different HF teacher."""
    out = str(tmp_path / "cache.zarr")
    dump_teacher(DumpConfig(data=DATA, out=out, teacher=TeacherSpec(name=f"hf:{tiny_vit}"), views=1, workers=0,
                            block_size=4, batch_size=4, device="cpu"), progress=False, log=lambda _m: None)
    save_tiny_vit(tiny_vit, seed=1)  # same name, new weights
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        verify_cache(out, TeacherSpec(name=f"hf:{tiny_vit}"), DATA, samples=4, device="cpu")


def test_hf_model_checkpoint_round_trip(tmp_path, tiny_vit):
    model = create_model(f"hf:{tiny_vit}", num_classes=NUM_CLASSES)
    with torch.no_grad():
        model.model.classifier.bias.add_(1.0)  # fine-tuned: differs from the directory's weights
    save_checkpoint(tmp_path / "ft.pt", model)
    again, _ = load_checkpoint(tmp_path / "ft.pt")
    assert model_cfg(again) == model_cfg(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(again.eval()(x), model.eval()(x))


def test_num_classes_mismatch_is_a_clear_model_error(tmp_path):
    path = save_tiny_vit(tmp_path / "vit5", num_labels=5)
    with pytest.raises(ModelError, match=r"predicts 5 classes \(config num_labels\) but the data has 10"):
        build_teacher(TeacherSpec(name=f"hf:{path}"), num_classes=DATA.open().num_classes)


@pytest.mark.parametrize(("ref", "message"), [
    ("./no/such/dir", "no such directory"),
    ("", "needs a model directory or a Hub id"),
])
def test_bad_references(ref, message):
    with pytest.raises(ModelError, match=message):
        create_model(f"hf:{ref}", num_classes=3)


def test_directory_without_a_model_is_a_model_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="hf model"):
        create_model(f"hf:{tmp_path / 'empty'}", num_classes=3)


def test_a_directory_without_an_image_processor_needs_size_mean_and_std(tmp_path):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    path = save_tiny_vit(tmp_path / "bare")
    (tmp_path / "bare" / "preprocessor_config.json").unlink()  # the model alone, as model.save_pretrained writes
    assert model_cfg(create_model(f"hf:{path}", num_classes=NUM_CLASSES)).requires_input == ("size", "mean", "std")
    out = str(tmp_path / "c.zarr")
    base = ["dump-teacher", "--data", "digits", "--limit", "8", "--teacher", f"hf:{path}", "--out", out,
            "--views", "1", "--workers", "0", "--block-size", "4", "--batch-size", "4", "--no-progress",
            "--device", "cpu"]
    res = CliRunner().invoke(cli, base + ["--size", "32"])
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line == (f"Error: model 'hf:{path}' has no image processor (preprocessor_config.json) to tell its "
                    "input: give --mean and --std (and --interpolation, else bilinear)")
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, base)
    assert res.output.strip().splitlines()[-1].endswith("give --size, --mean and --std (and --interpolation, "
                                                        "else bilinear)")
    res = CliRunner().invoke(cli, base + ["--size", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5",
                                          "0.5", "--interpolation", "bicubic"])
    assert res.exit_code == 0, res.output
    store = CacheStore.open(out)
    assert store.identity.view_spec["size"] == 32 and store.identity.view_spec["interpolation"] == "bicubic"
    assert store.identity.view_spec["mean"] == [0.5, 0.5, 0.5]
    report = verify_cache(out, TeacherSpec(name=f"hf:{path}"), DATA, samples=8, batch_size=4, device="cpu")
    assert report["ok"], report["failures"]
