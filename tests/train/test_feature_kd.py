"""Feature distillation from a cache's embeddings: the loss, the projection head, resume, and what is exported.

The student's pooled embedding goes through a learned projection to the teacher's dimension and is matched to
the cached embedding of the very view it sees; the projection trains with the student, travels in the
checkpoints for resume and is not part of the exported student.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import CheckpointError, ConfigError
from kdcache.models import create_model, pooled_embedder
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import LossConfig, TrainConfig, train_student
from kdcache.train._feature import Embedded, StudentWithFeatures, feature_loss
from kdcache.train._losses import DistillationLoss


def _cache(tmp_path, tiny_h5, teacher, targets="full+pooled:float16", views=2) -> str:
    out = str(tmp_path / f"{targets.replace(':', '_').replace('+', '_')}.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=out, teacher=TeacherSpec(weights=teacher),
                            views=views, view={"size": 32}, workers=0, block_size=16, targets=targets),
                 progress=False, log=lambda _m: None)
    return out


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_is_the_weighted_sum_of_its_parts_by_hand():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    emb, t_emb, t_logits = torch.randn(6, 5), torch.randn(6, 5), torch.randn(6, 3)
    teacher = {"logits": t_logits, "argmax": t_logits.argmax(1), "embedding": t_emb}
    cfg = LossConfig(alpha=0.3, temperature=2.0, feature_weight=0.7, feature_loss="cosine")
    parts = DistillationLoss(cfg, 3)(Embedded(logits, emb), y, teacher)
    task = F.cross_entropy(logits, y)
    kd = F.kl_div(F.log_softmax(logits / 2, 1), F.log_softmax(t_logits / 2, 1), reduction="batchmean",
                  log_target=True) * 4
    cos = (1 - (emb * t_emb).sum(1) / (emb.norm(dim=1) * t_emb.norm(dim=1))).mean()
    torch.testing.assert_close(parts["feature_loss"], cos)
    torch.testing.assert_close(parts["loss"], 0.7 * task + 0.3 * kd + 0.7 * cos)
    # no labels, no logits: the feature loss alone
    only = DistillationLoss(LossConfig(distill="none", feature_weight=2.0, task_weight=0.0, feature_loss="mse"), 3)
    torch.testing.assert_close(only(Embedded(logits, emb), y, {"embedding": t_emb})["loss"],
                               2.0 * F.mse_loss(emb, t_emb))
    torch.testing.assert_close(feature_loss("smooth_l1", emb, t_emb), F.smooth_l1_loss(emb, t_emb))
    with pytest.raises(ConfigError, match="shape"):
        feature_loss("cosine", emb, t_emb[:, :4])
    with pytest.raises(ConfigError, match="leaves nothing to learn"):
        LossConfig(distill="none", task_weight=0.0)
    with pytest.raises(ConfigError, match="feature_loss"):
        LossConfig(feature_weight=1.0, feature_loss="l3")


def test_the_projection_maps_the_student_embedding_to_the_teacher_dimension():
    student = create_model("cnn_tiny", num_classes=3)
    same = StudentWithFeatures(student, 32, 32)  # cnn_tiny's embedding is 32 long: no projection
    assert isinstance(same.head, torch.nn.Identity)
    other = StudentWithFeatures(student, 12, 32)
    assert isinstance(other.head, torch.nn.Linear) and other.head.weight.shape == (12, 32)
    x = torch.randn(2, 3, 32, 32)
    out = other.eval()(x)
    logits, emb = pooled_embedder(student)(x)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.embedding, other.head(emb))


def test_feature_kd_from_an_embedding_only_cache_learns_and_resumes_bit_for_bit(tmp_path, tiny_h5, tiny_teacher,
                                                                                monkeypatch):
    from kdcache.train import _run as runner

    cache = _cache(tmp_path, tiny_h5, tiny_teacher, targets="none+pooled:int8")
    loss = LossConfig(distill="none", feature_weight=1.0, task_weight=0.0)
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", model_kwargs={"width": 4}, cache=cache, batch_size=16, workers=0,
                val_split=None, epochs=6, lr=3e-3, warmup_epochs=0, loss=loss)
    train_student(TrainConfig(out=str(tmp_path / "full"), **base), progress=False, log=lambda _m: None)
    rows = _rows(tmp_path / "full")
    feats = [r["train/feature_loss"] for r in rows]
    assert feats[-1] < 0.8 * feats[0], feats  # the student's projected embedding moves toward the teacher's
    assert all(r["train/kd_loss"] == 0 and "train/teacher_agreement" not in r for r in rows)
    model, extra = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    assert set(extra["feature_head"]) == {"weight", "bias"} and extra["feature_dim"] == 32
    assert not any(k.startswith(("head.", "student.")) for k in model.state_dict())  # the student alone
    assert set(model.state_dict()) == set(create_model("cnn_tiny", num_classes=3, width=4).state_dict())

    real_end = runner.Run.end_epoch

    def crash_after_second_epoch(self, epoch, *a, **k):
        real_end(self, epoch, *a, **k)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.Run, "end_epoch", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_student(TrainConfig(out=str(tmp_path / "cut"), **base), progress=False, log=lambda _m: None)
    monkeypatch.setattr(runner.Run, "end_epoch", real_end)
    train_student(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base), progress=False, log=lambda _m: None)
    cut, cut_extra = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    for (k, a), (_, b) in zip(model.state_dict().items(), cut.state_dict().items()):
        assert torch.equal(a, b), k
    for k in extra["feature_head"]:
        assert torch.equal(extra["feature_head"][k], cut_extra["feature_head"][k]), k
    # the same run without feature distillation cannot resume it
    with pytest.raises(CheckpointError, match="with feature distillation"):
        train_student(TrainConfig(out=str(tmp_path / "cut"), resume=True,
                                  **{**base, "loss": LossConfig(distill="none"), "epochs": 7}),
                      progress=False, log=lambda _m: None)


def test_logit_and_feature_kd_together_and_the_online_reference_gets_the_same_losses(tmp_path, tiny_h5,
                                                                                     tiny_teacher):
    cache = _cache(tmp_path, tiny_h5, tiny_teacher, targets="full+pooled:float16")
    loss = LossConfig(distill="soft", alpha=0.5, feature_weight=1.0, feature_loss="smooth_l1")
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", cache=cache, batch_size=16, workers=0,
                val_split=None, epochs=1, max_steps_per_epoch=2, loss=loss)
    train_student(TrainConfig(out=str(tmp_path / "cached"), **base), progress=False, log=lambda _m: None)
    train_student(TrainConfig(out=str(tmp_path / "online"), teacher=TeacherSpec(weights=tiny_teacher), **base),
                  progress=False, log=lambda _m: None)
    cached, online = _rows(tmp_path / "cached")[0], _rows(tmp_path / "online")[0]
    for row in (cached, online):
        assert row["train/feature_loss"] > 0 and row["train/kd_loss"] > 0 and "train/teacher_agreement" in row
    # the online run draws fresh views, the cached one replays the cache's: close, not equal
    assert abs(cached["train/feature_loss"] - online["train/feature_loss"]) < 0.5 * cached["train/feature_loss"]


def test_feature_kd_needs_a_cache_with_embeddings_and_logit_kd_needs_logits(tmp_path, tiny_h5, tiny_teacher):
    plain = _cache(tmp_path, tiny_h5, tiny_teacher, targets="full")
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", batch_size=16, workers=0, val_split=None,
                epochs=1)
    with pytest.raises(ConfigError, match=r"holds no embeddings \(targets full\)"):
        train_student(TrainConfig(out=str(tmp_path / "a"), cache=plain, loss=LossConfig(feature_weight=1.0), **base),
                      progress=False, log=lambda _m: None)
    only = _cache(tmp_path, tiny_h5, tiny_teacher, targets="none+pooled:float16")
    with pytest.raises(ConfigError, match="embeddings only"):
        train_student(TrainConfig(out=str(tmp_path / "b"), cache=only, loss=LossConfig(feature_weight=1.0), **base),
                      progress=False, log=lambda _m: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_distilled_deit_learns_hard_kd_on_its_token_and_features_on_its_pooled_embedding(tmp_path, tiny_h5,
                                                                                            tiny_teacher):
    """DeiT's two heads (class token: labels; distillation token: the teacher's argmax) beside feature KD on the
    student's pooled embedding; the exported model is the DeiT alone."""
    cache = _cache(tmp_path, tiny_h5, tiny_teacher, targets="full+pooled:int8")
    out = tmp_path / "deit"
    train_student(TrainConfig(data=DataConfig(source=tiny_h5), out=str(out), model="deit_test_distilled",
                              cache=cache, epochs=2, batch_size=16, workers=0, device="cpu", val_split=None,
                              loss=LossConfig(distill="hard", alpha=0.5, feature_weight=1.0)),
                  progress=False, log=lambda _m: None)
    rows = _rows(out)
    assert all(r["train/kd_loss"] > 0 and r["train/feature_loss"] > 0 for r in rows)
    assert rows[-1]["train/feature_loss"] < rows[0]["train/feature_loss"] + 0.5  # finite, learning, not diverging
    model, extra = load_checkpoint(str(out / "last.pt"))
    assert set(model.state_dict()) == set(create_model("deit_test_distilled", num_classes=3).state_dict())
    # deit_test's pooled embedding is 32 wide, as the teacher's: the projection is the identity (nothing to save)
    assert extra["feature_head"] == {} and json.loads((out / "config.json").read_text())["feature_dim"] == 32
