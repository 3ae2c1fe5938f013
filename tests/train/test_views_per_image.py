"""Several cached views per decoded image (``views_per_image``): one decode feeds M batches, the run trains on
exactly the views (and targets) a one-view-per-decode run trains on, and replay stays exact."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from kdcache.data import DataConfig
from kdcache.engine import TeacherSpec
from kdcache.engine._verify import default_atol
from kdcache.errors import ConfigError
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import LossConfig, TrainConfig, _epochs, train_student
from kdcache.train._stream import StreamedTargets


@pytest.fixture
def cache(make_cache) -> str:
    return make_cache(4, 16)


def _run(tmp_path, tiny_h5, cache, name, m, monkeypatch, decodes, epochs=4):
    seen = []
    original = StreamedTargets.__call__

    def recording(self, batch, images):
        t = original(self, batch, images)
        seen.append((batch, images.clone(), {k: v.clone() for k, v in t.items()}))
        return t

    monkeypatch.setattr(StreamedTargets, "__call__", recording)
    decodes.clear()
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / name), model="cnn_tiny", cache=cache,
                      epochs=epochs, batch_size=16, workers=0, val_split=None, test_split=None, device="cpu",
                      views_per_image=m, loss=LossConfig(distill="soft"))  # no test split: it would decode too
    train_student(cfg, progress=False, log=lambda _m: None)
    monkeypatch.setattr(StreamedTargets, "__call__", original)
    return seen, Counter(decodes)


def _key(batch, row, t):
    p = batch.params[row]
    return int(batch.indices[row]), p.crop, p.flip, tuple(t["logits"][row].tolist())


@pytest.mark.parametrize("window", [None, 1])
def test_m_views_per_decode_train_on_the_same_views_and_targets(tmp_path, tiny_h5, tiny_teacher, cache,
                                                                 monkeypatch, decodes, window):
    if window:  # stream the targets one cache block per window (what a small --target-memory-mb does)
        monkeypatch.setattr(_epochs, "store_window", lambda *_a: window)
    one, dec1 = _run(tmp_path, tiny_h5, cache, "m1", 1, monkeypatch, decodes)
    two, dec2 = _run(tmp_path, tiny_h5, cache, "m2", 2, monkeypatch, decodes)
    # the same (sample, view, targets) over the run; the schedule counts samples: same number of steps
    assert len(one) == len(two) == 4 * 3
    assert Counter(_key(b, r, t) for b, _, t in one for r in range(len(b.indices))) == \
        Counter(_key(b, r, t) for b, _, t in two for r in range(len(b.indices)))
    # one decode per image per pass: 4 epochs -> 4 decodes with M = 1, 2 with M = 2
    assert set(dec1.values()) == {4} and set(dec2.values()) == {2}
    # consecutive batches share their images (one decode), never two views of one image in a batch
    for (a, _, _), (b, _, _) in zip(two[0::2], two[1::2]):
        assert (a.slot, b.slot) == (0, 1) and np.array_equal(a.indices, b.indices)
        assert len(set(a.indices.tolist())) == len(a.indices)
    # replay stays exact: the cache's teacher on the images the student got gives the cached targets
    teacher, _ = load_checkpoint(tiny_teacher)
    teacher.eval()
    with torch.inference_mode():
        for _, images, t in two:
            fresh = teacher(images)
            assert (fresh - t["logits"].float()).abs().max() <= default_atol(fresh.abs().max())
    cfg = json.loads((tmp_path / "m2" / "config.json").read_text())
    assert cfg["config"]["views_per_image"] == 2
    rows = [json.loads(x) for x in (tmp_path / "m2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 3] and rows[0]["train/images"] == 2 * 48


def test_views_per_image_is_refused_where_it_cannot_apply(tmp_path, tiny_h5, cache):
    base = dict(data=DataConfig(source=tiny_h5), out=str(tmp_path / "r"), model="cnn_tiny")
    with pytest.raises(ConfigError, match="multiple of `views_per_image`"):
        TrainConfig(**base, cache=cache, epochs=3, views_per_image=2)
    with pytest.raises(ConfigError, match="`views_per_image` must be >= 1"):
        TrainConfig(**base, cache=cache, views_per_image=0)
    with pytest.raises(ConfigError, match="online teacher"):
        train_student(TrainConfig(**base, teacher=TeacherSpec(name="cnn_tiny"), epochs=2, views_per_image=2,
                                  workers=0, device="cpu"), progress=False, log=lambda _m: None)
