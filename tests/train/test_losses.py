from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import CacheIncompleteError, ConfigError
from kdcache.train import DistillationLoss, LossConfig, epoch_views, soft_labels, teacher_log_probs


def test_soft_kd_matches_hinton_formula():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    y = soft_labels(torch.tensor([0, 1, 2, 3]), 6)
    T, a = 3.0, 0.3
    out = DistillationLoss(LossConfig(distill="soft", alpha=a, temperature=T), 6)(s, y, {"logits": t})
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    ce = F.cross_entropy(s, torch.tensor([0, 1, 2, 3]))
    assert torch.allclose(out["kd_loss"], kl, atol=1e-5) and torch.allclose(out["task_loss"], ce, atol=1e-6)
    assert torch.allclose(out["loss"], (1 - a) * ce + a * kl, atol=1e-5)


def test_hard_kd_routes_heads_like_deit():
    cls, dist = torch.randn(3, 5), torch.randn(3, 5)
    labels, t_arg = torch.tensor([0, 1, 2]), torch.tensor([4, 4, 1])
    out = DistillationLoss(LossConfig(distill="hard", alpha=0.5), 5)(
        (cls, dist), soft_labels(labels, 5), {"argmax": t_arg})
    expect = (F.cross_entropy(cls, labels) + F.cross_entropy(dist, t_arg)) / 2
    assert torch.allclose(out["loss"], expect, atol=1e-6)


def test_mixed_labels():
    y = soft_labels(torch.tensor([0, 1]), 3, partner_labels=torch.tensor([2, 1]), lam=torch.tensor([0.25, 0.5]))
    assert torch.allclose(y, torch.tensor([[0.25, 0, 0.75], [0, 1.0, 0]]))


def test_topk_spread_is_exact_at_t1_and_renorm_drops_tail():
    logits = torch.randn(5, 10) * 3
    vals, idx = logits.topk(3, 1)
    tail = torch.logsumexp(logits.scatter(1, idx, float("-inf")), 1)
    t = {"topk_values": vals, "topk_indices": idx, "topk_tail_lse": tail}
    exact = F.log_softmax(logits, 1)
    spread = teacher_log_probs(t, 10, 1.0, "spread")
    assert torch.allclose(spread.gather(1, idx), exact.gather(1, idx), atol=1e-5)
    assert torch.allclose(spread.exp().sum(1), torch.ones(5), atol=1e-5)
    renorm = teacher_log_probs(t, 10, 2.0, "renorm").exp()
    assert torch.allclose(renorm.gather(1, idx).sum(1), torch.ones(5), atol=1e-5)
    assert math.isclose(float(renorm.sum()), 5.0, rel_tol=1e-5)


def test_loss_config_validation():
    for bad in (dict(distill="x"), dict(alpha=2.0), dict(temperature=0.0), dict(topk_fill="y")):
        with pytest.raises(ConfigError):
            LossConfig(**bad)


def test_epoch_views_cycle_through_done_views():
    done = np.ones((3, 4), bool)
    seen = np.stack([epoch_views(done, epoch=e, seed=1) for e in range(4)])
    for b in range(3):
        assert sorted(seen[:, b]) == [0, 1, 2, 3]  # each view once per cycle of V epochs
    assert not np.array_equal(seen, np.stack([epoch_views(done, epoch=e, seed=2) for e in range(4)]))
    partial = done.copy()
    partial[1, 2:] = False
    assert all(epoch_views(partial, epoch=e, seed=0)[1] in (0, 1) for e in range(6))
    partial[2] = False
    with pytest.raises(CacheIncompleteError):
        epoch_views(partial, epoch=0, seed=0)


def test_configs_round_trip_through_json():
    import json

    from kdcache.data import DataConfig
    from kdcache.engine import DumpConfig, TeacherSpec
    from kdcache.train import TrainConfig

    t = TrainConfig(data=DataConfig(source="digits", limit=100), out="r", model="cnn_tiny",
                    model_kwargs={"width": 4}, loss=LossConfig(distill="hard", alpha=0.3), epochs=3)
    assert TrainConfig.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    d = DumpConfig(data=DataConfig(source="digits"), out="c.zarr", teacher=TeacherSpec(name="cnn_small", random_init=True, init_seed=3),
                   views=3, view={"scale": (0.5, 1.0), "mix": "cutmix"}, targets="topk:2")
    assert DumpConfig.from_dict(json.loads(json.dumps(d.to_dict()))) == d
