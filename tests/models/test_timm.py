"""Real timm models (random weights, nothing downloads) as kdcache teachers and students.

Each model's ``pretrained_cfg`` must become its ModelCfg and from there the dump's view spec and
the evaluation view; a dump over a few digits images must replay exactly (``verify_cache``); timm's
distilled DeiT must return ``(cls, dist)`` in training so the distillation loss trains its own
distillation head from the teacher's hard targets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcache._views import ReplayViews, resolve_view_spec
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.engine._verify import verify_cache
from kdcache.errors import DownloadUnavailableError, ModelError
from kdcache.models import create_model, load_checkpoint, model_cfg, save_checkpoint
from kdcache.train import LossConfig, TrainConfig, train_student
from kdcache.train._losses import DistillationLoss

timm = pytest.importorskip("timm")

MODELS = ["resnet18", "deit_tiny_distilled_patch16_224", "vit_tiny_patch16_224"]
NUM_CLASSES = 10  # the digits dataset
DATA = DataConfig(source="digits", limit=4)


@pytest.fixture
def hub_offline(monkeypatch):
    """Make any Hugging Face Hub access fail at once, as on a machine without network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _teacher_checkpoint(tmp_path, name: str) -> str:
    torch.manual_seed(0)
    return str(save_checkpoint(tmp_path / "teacher.pt", create_model(f"timm:{name}", num_classes=NUM_CLASSES)))


def _dump(tmp_path, teacher: str, *, views: int = 2) -> str:
    out = str(tmp_path / "cache.zarr")
    dump_teacher(DumpConfig(data=DATA, out=out, teacher=TeacherSpec(weights=teacher), views=views, seed=5,
                            batch_size=4, workers=0, block_size=4, device="cpu"),
                 progress=False, log=lambda _m: None)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_becomes_model_cfg_view_spec_and_eval_view(name):
    model = create_model(f"timm:{name}", num_classes=NUM_CLASSES)
    pc, cfg = model.pretrained_cfg, model_cfg(model)
    assert (cfg.name, cfg.kwargs) == (f"timm:{name}", {"num_classes": NUM_CLASSES})
    assert cfg.input_size == pc["input_size"][-1] == 224
    assert (cfg.mean, cfg.std) == (tuple(pc["mean"]), tuple(pc["std"]))
    assert (cfg.interpolation, cfg.crop_pct) == (pc["interpolation"], pc["crop_pct"]) and cfg.crop_pct < 1

    spec = resolve_view_spec(cfg, {})
    assert (spec.size, spec.mean, spec.std, spec.interpolation, spec.crop_pct) == (
        224, cfg.mean, cfg.std, cfg.interpolation, cfg.crop_pct)
    # The evaluation view is timm's own eval transform: resize to floor(224 / crop_pct), centre crop 224.
    assert spec.eval_resize == math.floor(224 / pc["crop_pct"])
    data_cfg = timm.data.resolve_data_config({}, model=model)
    timm_eval = timm.data.create_transform(**data_cfg)
    assert timm_eval.transforms[0].size == spec.eval_resize
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    ours = ViewPipeline(spec).eval_view(image)
    assert ours.shape == (3, 224, 224)
    from PIL import Image

    theirs = timm_eval(Image.fromarray(image.permute(1, 2, 0).numpy()))
    # PIL's and torchvision's tensor bicubic resizers differ by a few grey levels; the geometry is the same.
    assert (ours - theirs).abs().mean() < 0.05

    model.eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 224, 224))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_timm_teacher_dump_replays_exactly(tmp_path, name):
    teacher = _teacher_checkpoint(tmp_path, name)
    cache = _dump(tmp_path, teacher)
    store = CacheStore.open(cache)
    spec = ViewSpec.from_dict(store.identity.view_spec)
    assert (spec.size, spec.interpolation) == (224, "bicubic")
    assert store.identity.teacher["name"] == f"timm:{name}"
    report = verify_cache(cache, TeacherSpec(weights=teacher), DATA, samples=8, batch_size=4, device="cpu")
    assert report["ok"], report["failures"]
    assert report["samples_checked"] == 8 and report["coverage"] == 1.0


def test_timm_distilled_deit_returns_both_heads_in_training_and_survives_a_checkpoint(tmp_path):
    model = create_model("timm:deit_tiny_distilled_patch16_224", num_classes=NUM_CLASSES)
    x = torch.randn(2, 3, 224, 224)
    out = model.train()(x)
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, NUM_CLASSES)] * 2
    model.eval()
    with torch.inference_mode():
        avg = model(x)
        assert torch.allclose(avg, (model.head(model.forward_features(x)[:, 0]) +
                                    model.head_dist(model.forward_features(x)[:, 1])) / 2, atol=1e-5)
    save_checkpoint(tmp_path / "deit.pt", model)
    again, _ = load_checkpoint(tmp_path / "deit.pt")
    assert isinstance(again.train()(x), tuple)  # distilled training is switched on again on load


def test_timm_deit_distillation_head_learns_the_teacher_hard_targets(tmp_path):
    cache = _dump(tmp_path, _teacher_checkpoint(tmp_path, "resnet18"), views=1)
    store = CacheStore.open(cache)
    arrays = store.read_views([0] * store.num_blocks)
    argmax = torch.from_numpy(arrays.pop("argmax").astype(np.int64))
    arrays.pop("logits")
    ds = DATA.open()
    views = ReplayViews(ds, ViewPipeline(ViewSpec.from_dict(store.identity.view_spec)), arrays)
    batch = views.__getitems__(list(range(len(ds))))
    labels = torch.as_tensor(ds.labels)
    assert not torch.equal(argmax, labels)  # a random teacher: its targets are not the labels

    torch.manual_seed(0)
    student = create_model("timm:deit_tiny_distilled_patch16_224", num_classes=NUM_CLASSES).train()
    loss_fn = DistillationLoss(LossConfig(distill="hard", alpha=1.0), NUM_CLASSES)
    with torch.no_grad():
        tokens = student.forward_features(batch.images)  # train the heads on fixed features: fast
    head0 = student.head.weight.detach().clone()
    opt = torch.optim.SGD([*student.head.parameters(), *student.head_dist.parameters()], lr=0.5)
    y = F.one_hot(labels, NUM_CLASSES).float()
    for _ in range(40):
        opt.zero_grad()
        out = student.forward_head(tokens)
        parts = loss_fn(out, y, {"argmax": argmax})
        assert torch.allclose(parts["kd_loss"], F.cross_entropy(out[1], argmax))
        parts["loss"].backward()
        opt.step()
    assert torch.equal(student.head.weight, head0)  # alpha=1: the class head gets no teacher signal
    student.eval()
    with torch.no_grad():
        dist_pred = student.head_dist(tokens[:, 1]).argmax(1)
    assert torch.equal(dist_pred, argmax)


def test_train_student_runs_a_timm_distilled_deit_from_a_cache(tmp_path):
    cache = _dump(tmp_path, _teacher_checkpoint(tmp_path, "resnet18"), views=1)
    cfg = TrainConfig(data=DATA, out=str(tmp_path / "student"), model="timm:deit_tiny_distilled_patch16_224",
                      cache=cache, epochs=1, batch_size=2, workers=0, device="cpu", val_split=None,
                      loss=LossConfig(distill="hard"))
    train_student(cfg, progress=False, log=lambda _m: None)
    model, extra = load_checkpoint(tmp_path / "student" / "last.pt")
    assert model_cfg(model).name == "timm:deit_tiny_distilled_patch16_224"
    assert extra["metrics"]["train/kd_loss"] > 0


def test_timm_unknown_model_and_unknown_argument():
    with pytest.raises(ModelError, match="Unknown model"):
        create_model("timm:no_such_net_xyz", num_classes=3)
    with pytest.raises(ModelError, match="unexpected keyword argument 'widht'"):
        create_model("timm:resnet18", num_classes=3, widht=2)


def test_timm_pretrained_weights_offline_is_a_clear_error(hub_offline):
    with pytest.raises(DownloadUnavailableError, match="`teacher_weights` PATH"):
        create_model("timm:resnet18", num_classes=3, pretrained=True)
