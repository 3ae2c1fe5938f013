"""Repeated augmentation from a cache (``repeated_views`` R): each epoch trains on 1/R of the images, each with
R distinct cached views in one batch (trained in the same step), an epoch keeps N samples, the share changes
every epoch, and the targets stay the teacher's on the replayed views."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from kdcache.data import DataConfig
from kdcache.engine import TeacherSpec, build_teacher
from kdcache.engine._verify import default_atol
from kdcache.errors import ConfigError
from kdcache.train import LossConfig, TrainConfig, _epochs, train_student
from kdcache.train._stream import StreamedTargets


def _run(tmp_path, tiny_h5, cache, monkeypatch, r, *, epochs=2, window=None):
    if window:
        monkeypatch.setattr(_epochs, "store_window", lambda *_a: window)
    seen = []
    original = StreamedTargets.__call__

    def recording(self, batch, images):
        t = original(self, batch, images)
        if batch.parts:  # the loop's call (a merged batch calls again for each of its slots)
            seen.append((batch, images.clone(), {k: v.clone() for k, v in t.items()}))
        return t

    monkeypatch.setattr(StreamedTargets, "__call__", recording)
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / f"r{r}-{window}"), model="cnn_tiny",
                      cache=cache, epochs=epochs, batch_size=8, workers=0, val_split=None, device="cpu",
                      repeated_views=r, loss=LossConfig(distill="soft"))
    train_student(cfg, progress=False, log=lambda _m: None)
    monkeypatch.setattr(StreamedTargets, "__call__", original)
    return seen


@pytest.mark.parametrize("window", [None, 1])
def test_each_epoch_is_a_share_of_the_images_with_r_views_each(tmp_path, tiny_h5, tiny_teacher, make_cache,
                                                               monkeypatch, window):
    cache = make_cache(4, 16)
    seen = _run(tmp_path, tiny_h5, cache, monkeypatch, 2, window=window)
    teacher = build_teacher(TeacherSpec(weights=tiny_teacher), num_classes=3).model
    per_epoch = len(seen) // 2
    assert per_epoch == 48 // 8  # as many steps as a plain epoch
    shares = []
    for e in range(2):
        batches = seen[e * per_epoch:(e + 1) * per_epoch]
        samples = Counter(int(i) for b, _, _ in batches for i in b.indices)
        assert sum(samples.values()) == 48 and len(samples) == 24 and set(samples.values()) == {2}
        shares.append(set(samples))
        # an image's two repeats are two different cached views (different crops) in the same batch
        for b, _, _ in batches:
            assert b.parts == (4, 4) and len(b.indices) == 8
            assert list(b.indices[:4]) == list(b.indices[4:])
            assert any(p.crop != q.crop for p, q in zip(b.params[:4], b.params[4:]))
        for _, images, t in batches:
            with torch.inference_mode():
                fresh = teacher(images)
            assert float((fresh - t["logits"]).abs().max()) <= default_atol(float(fresh.abs().max()))
    assert shares[0] != shares[1]  # a new share of the images every epoch


def test_repeated_views_is_refused_where_it_cannot_apply(tmp_path, tiny_h5, make_cache):
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "x"), model="cnn_tiny", cache="c.zarr",
                    epochs=2, views_per_image=2, repeated_views=2)
    with pytest.raises(ConfigError, match="`repeated_views` must be >= 1"):
        TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "x"), model="cnn_tiny", repeated_views=0)
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "y"), model="cnn_tiny", epochs=1,
                      teacher=TeacherSpec(name="cnn_tiny", random_init=True), repeated_views=2,
                      loss=LossConfig(distill="soft"))
    with pytest.raises(ConfigError, match="an online teacher draws fresh views"):
        train_student(cfg, progress=False)
