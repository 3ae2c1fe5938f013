"""Students learning from several of a cache's teachers: an ensemble's logits, another teacher's embedding.

The ensemble target is the weighted mean of the teachers' probabilities at the temperature T, handed to the
loss as logits ``T · log p̄`` (so soft KD at T learns exactly p̄); each teacher's targets are its own cached
targets for the very view the student sees (checked here against the cache's arrays read by hand, a top-k
teacher included).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcache._runtime import DistContext
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.cache._targets import decode_targets
from kdcache.cache._teachers import open_teacher
from kdcache.data import DataConfig
from kdcache.engine import AddTeacherConfig, DumpConfig, TeacherSpec, add_teacher, dump_teacher
from kdcache.errors import ConfigError
from kdcache.models import create_model
from kdcache.models._checkpoint import save_checkpoint
from kdcache.train import LossConfig, TrainConfig, train_student
from kdcache.train._epochs import cached_epochs
from kdcache.train._losses import DistillationLoss, ensemble_logits
from kdcache.train._schedule import epoch_views


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _probs_by_hand(targets: dict[str, np.ndarray], classes: int, t: float) -> np.ndarray:
    """A teacher's softmax at T from its decoded targets: full logits, or top-k with the tail spread."""
    if "logits" in targets:
        return _softmax(targets["logits"].astype(np.float64) / t)
    vals, idx = targets["topk_values"].astype(np.float64), targets["topk_indices"]
    full = np.repeat((targets["topk_tail_lse"].astype(np.float64) - np.log(classes - vals.shape[1]))[:, None],
                     classes, axis=1)
    np.put_along_axis(full, idx.astype(np.int64), vals, axis=1)
    return _softmax(full / t)


def test_ensemble_logits_are_the_weighted_mean_of_the_probabilities_at_t():
    torch.manual_seed(0)
    z = [torch.randn(5, 4) * 3 for _ in range(3)]
    parts = [{"logits": x, "argmax": x.argmax(1)} for x in z]
    got = ensemble_logits(parts, [1.0, 2.0, 1.0], 4, 2.5)
    mean = sum(w * _softmax(x.numpy().astype(np.float64) / 2.5) for w, x in zip([0.25, 0.5, 0.25], z))
    np.testing.assert_allclose(torch.softmax(got / 2.5, dim=1).numpy(), mean, rtol=1e-5, atol=1e-7)
    # soft KD at T from the ensemble logits is KL(p̄ || student) · T² by hand
    student = torch.randn(5, 4)
    kd = DistillationLoss(LossConfig(alpha=1.0, temperature=2.5), 4)(student, torch.zeros(5, dtype=torch.long),
                                                                     {"logits": got, "argmax": got.argmax(1)})
    s = torch.log_softmax(student.double() / 2.5, 1).numpy()
    want = (mean * (np.log(mean) - s)).sum(1).mean() * 2.5 ** 2
    np.testing.assert_allclose(kd["kd_loss"].item(), want, rtol=1e-5)
    # one teacher: its own distribution
    np.testing.assert_allclose(torch.softmax(ensemble_logits(parts[:1], [3.0], 4, 2.5) / 2.5, 1).numpy(),
                               _softmax(z[0].numpy().astype(np.float64) / 2.5), rtol=1e-5, atol=1e-7)


def test_ensemble_weights_and_teacher_names_are_checked():
    for bad, match in [(dict(teachers=("a", "a")), "name each teacher once"),
                       (dict(teachers=()), "name each teacher once"),
                       (dict(teachers=("a", "b"), ensemble_weights=(1.0,)), "one weight >= 0 per teacher"),
                       (dict(teachers=("a", "b"), ensemble_weights=(1.0, -1.0)), "one weight >= 0 per teacher"),
                       (dict(teachers=("a", "b"), ensemble_weights=(0.0, 0.0)), "not all 0")]:
        with pytest.raises(ConfigError, match=match):
            LossConfig(**bad)


@pytest.fixture
def three_teachers(tmp_path, tiny_h5, make_cache) -> str:
    """A cache of the tiny teacher (main) with two more added: t2 (full logits and an embedding), t3 (top-2)."""
    cache = make_cache(2, 16)
    for name, seed, targets in (("t2", 2, "full+pooled:float16"), ("t3", 3, "topk:2")):
        torch.manual_seed(seed)
        path = tmp_path / f"{name}.pt"
        save_checkpoint(str(path), create_model("cnn_tiny", num_classes=3))
        add_teacher(AddTeacherConfig(cache=cache, name=name, teacher=TeacherSpec(weights=str(path)),
                                     targets=targets, workers=0, device="cpu"), progress=False, log=lambda _m: None)
    return cache


def _cfg(tmp_path, tiny_h5, cache, **loss) -> TrainConfig:
    return TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "run"), model="cnn_tiny", cache=cache,
                       loss=LossConfig(**loss), epochs=1, batch_size=8, workers=0, device="cpu",
                       val_split=None, test_split=None, seed=5)


def test_a_batch_gets_the_ensemble_of_each_teachers_targets_for_its_own_views(tmp_path, tiny_h5, three_teachers):
    cfg = _cfg(tmp_path, tiny_h5, three_teachers, teachers=("main", "t2", "t3"), ensemble_weights=(1.0, 2.0, 1.0),
               temperature=2.0, feature_weight=0.5, feature_teacher="t2")
    root = CacheStore.open(three_teachers)
    ds = cfg.data.open()
    epoch_data = cached_epochs(root, ds, ViewPipeline(ViewSpec.from_dict(root.identity.view_spec)), cfg,
                               DistContext(), False)
    loader, targets = epoch_data(1)
    views = epoch_views(root.done_units(), epoch=1, seed=cfg.seed)  # every teacher covers every view here
    seen = 0
    try:
        for batch in loader:
            got = targets(batch, batch.images)
            idx = np.asarray(batch.indices)
            mean = 0.0
            for name, w in (("main", 0.25), ("t2", 0.5), ("t3", 0.25)):
                t = open_teacher(root, name)
                arrays = t.read_views(views, t.layout.logit_target_names)
                mean = mean + w * _probs_by_hand(decode_targets({k: v[idx] for k, v in arrays.items()}), 3, 2.0)
            np.testing.assert_allclose(torch.softmax(got["logits"] / 2.0, 1).numpy(), mean, rtol=1e-4, atol=1e-6)
            np.testing.assert_array_equal(got["argmax"].numpy(), mean.argmax(1))
            t2 = open_teacher(root, "t2")
            emb = t2.read_views(views, ["embedding"])["embedding"][idx].astype(np.float32)
            np.testing.assert_array_equal(got["embedding"].numpy(), emb)
            seen += len(idx)
    finally:
        targets.close()
    assert seen == len(ds)


def test_a_student_trains_from_an_ensemble_and_another_teachers_embedding(tmp_path, tiny_h5, three_teachers):
    cfg = _cfg(tmp_path, tiny_h5, three_teachers, teachers=("main", "t2", "t3"), feature_weight=1.0,
               feature_teacher="t2")
    train_student(cfg, progress=False, log=lambda _m: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/kd_loss"] > 0 and rows[-1]["train/feature_loss"] > 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["loss"]["teachers"] == ["main", "t2", "t3"]
    assert recorded["config"]["loss"]["feature_teacher"] == "t2"
    root = CacheStore.open(three_teachers)
    assert recorded["teachers"] == {n: open_teacher(root, n).identity.fingerprint for n in ("main", "t2", "t3")}


def test_teachers_that_cannot_serve_the_loss_are_refused_in_one_line(tmp_path, tiny_h5, three_teachers):
    for loss, match in [(dict(teachers=("main", "t9")), "has no teacher 't9' \\(its teachers: main, t2, t3\\)"),
                        (dict(feature_weight=1.0), "teacher 'main' of .* holds no embeddings"),
                        (dict(feature_weight=1.0, feature_teacher="t3"), "teacher 't3' of .* holds no embeddings")]:
        with pytest.raises(Exception, match=match):
            train_student(_cfg(tmp_path, tiny_h5, three_teachers, **loss), progress=False, log=lambda _m: None)
    online = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "o"), model="cnn_tiny",
                         teacher=TeacherSpec(name="cnn_tiny", random_init=True), loss=LossConfig(teachers=("t2",)),
                         epochs=1, device="cpu", workers=0)
    with pytest.raises(ConfigError, match="an online teacher is one model"):
        train_student(online, progress=False, log=lambda _m: None)


def test_an_epoch_replays_only_views_that_every_teacher_it_learns_from_covers(tmp_path, tiny_h5, tiny_teacher,
                                                                               three_teachers):
    # views 2-3 added to the cache after t2 and t3 were: only main covers them
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=three_teachers, teacher=TeacherSpec(
        weights=tiny_teacher), add_views=2, view={"size": 16}, workers=0, block_size=16, device="cpu"),
        progress=False, log=lambda _m: None)
    root = CacheStore.open(three_teachers)
    assert root.num_views == 4 and open_teacher(root, "t2").num_views == 2
    pipeline = ViewPipeline(ViewSpec.from_dict(root.identity.view_spec))
    ds = DataConfig(source=tiny_h5).open()
    used: dict[str, set[int]] = {}
    for label, loss in (("ensemble", dict(teachers=("main", "t2"))), ("main", {})):
        epoch_data = cached_epochs(root, ds, pipeline, _cfg(tmp_path, tiny_h5, three_teachers, **loss), DistContext(),
                                   False)
        used[label] = set()
        for epoch in range(6):
            _, targets = epoch_data(epoch)
            streams = targets.sources.values() if hasattr(targets, "sources") else [targets]
            used[label] |= {int(v) for s in streams for v in s.views[0]}
            targets.close()
    assert used["ensemble"] == {0, 1}
    assert used["main"] & {2, 3}  # the main teacher alone uses the new views too


def test_cache_dataset_gives_each_named_teachers_targets_for_the_same_view(tmp_path, tiny_h5, three_teachers):
    from kdcache import CacheDataset

    plain = CacheDataset(three_teachers, seed=3, epoch=1)
    named = CacheDataset(three_teachers, seed=3, epoch=1, teachers=["main", "t2", "t3"])
    root = CacheStore.open(three_teachers)
    for i in (0, 17, 47):
        a, b = plain[i], named[i]
        assert a["view"] == b["view"] and torch.equal(a["image"], b["image"])
        assert set(b["targets"]) == {"main", "t2", "t3"}
        for k, v in a["targets"].items():  # main's are the plain dataset's
            assert torch.equal(b["targets"]["main"][k], v)
        for n in ("t2", "t3"):
            t = open_teacher(root, n)
            unit = t.read_unit(i // t.block_size, b["view"], t.layout.target_names)
            want = decode_targets({k: v[i % t.block_size: i % t.block_size + 1] for k, v in unit.items()})
            assert set(b["targets"][n]) == set(want)
            for k, v in want.items():
                np.testing.assert_array_equal(b["targets"][n][k].numpy(), np.asarray(v[0]).astype(
                    np.float32 if np.issubdtype(np.asarray(v).dtype, np.floating) else np.int64))
    batch = torch.utils.data.default_collate([named[i] for i in range(4)])
    assert batch["targets"]["t2"]["embedding"].shape == (4, open_teacher(root, "t2").layout.embedding_dim)
    with pytest.raises(Exception, match="has no teacher 'nope'"):
        CacheDataset(three_teachers, teachers=["main", "nope"])
    with pytest.raises(ConfigError, match="named twice"):
        CacheDataset(three_teachers, teachers=["t2", "t2"])


def test_the_online_reference_of_an_ensemble_row_runs_the_caches_teachers_on_fresh_views(tmp_path, tiny_h5,
                                                                                          three_teachers, monkeypatch):
    """--online-cache-teachers: the same loss from the same teachers, each built as the cache records it, run on
    every batch's fresh views; the batch's targets are the ensemble of their forwards on those very images."""
    from kdcache import _teacher
    from kdcache.train import _runner

    seen: list[tuple[dict, torch.Tensor]] = []
    real = _runner.online_cache_targets

    def recording(*a, **kw):
        source = real(*a, **kw)

        def call(batch, images):
            out = source(batch, images)
            seen.append(({n: s.model for n, s in source.sources.items()}, images.clone(), out))
            return out
        return call

    monkeypatch.setattr(_runner, "online_cache_targets", recording)
    cfg = _cfg(tmp_path, tiny_h5, three_teachers, teachers=("main", "t2"), ensemble_weights=(1.0, 3.0),
               temperature=2.0, feature_weight=1.0, feature_teacher="t2")
    cfg = TrainConfig(**{**cfg.__dict__, "online_cache_teachers": True})
    train_student(cfg, progress=False, log=lambda _m: None)
    assert seen
    models, images, out = seen[0]
    with torch.inference_mode():
        parts = [{"logits": models[n](images).float()} for n in ("main", "t2")]
        emb = _teacher.target_forward(models["t2"], logits=False, embedding=True)(images)[1]
    for p in parts:
        p["argmax"] = p["logits"].argmax(1)
    want = ensemble_logits(parts, [1.0, 3.0], 3, 2.0)
    torch.testing.assert_close(out["logits"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["embedding"], emb.float())
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["config"]["online_cache_teachers"] is True and set(recorded["teachers"]) == {"main", "t2"}
    with pytest.raises(ConfigError, match="needs `cache`"):
        TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "x"), model="cnn_tiny",
                    online_cache_teachers=True)
