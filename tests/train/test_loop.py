"""The training loop's parts, tested directly: label and cached targets, one epoch, the LR schedule, model arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdcache._utils import parse_model_args
from kdcache._views import ViewBatch
from kdcache.augment import ViewParams
from kdcache.errors import ConfigError, KdcacheError
from kdcache.train import DistillationLoss, LossConfig, evaluate, train_one_epoch
from kdcache.train._loop import label_targets
from kdcache.train._optim import build_scheduler
from kdcache.train._targets import CachedTargets

C = 4


def _batch(indices, partners=None, lams=None, size=6) -> ViewBatch:
    partners = partners or [-1] * len(indices)
    lams = lams or [1.0] * len(indices)
    params = [ViewParams(crop=(0, 0, size, size), flip=False, mix_kind=0 if p < 0 else 1, partner=p,
                         lam=lam) for p, lam in zip(partners, lams)]
    g = torch.Generator().manual_seed(int(sum(indices)))
    return ViewBatch(indices=np.asarray(indices), views=np.zeros(len(indices), np.int64),
                     seeds=np.zeros(len(indices), np.int64), params=params,
                     images=torch.randn(len(indices), 3, size, size, generator=g))


def test_label_and_cached_targets_one_hot_mixed_and_teacher_rows():
    labels = np.array([0, 1, 2, 3, 1])
    teacher = {"logits": np.arange(5 * C, dtype=np.float16).reshape(5, C), "argmax": np.array([3, 2, 1, 0, 3])}
    batch = _batch([4, 2], partners=[-1, 0], lams=[1.0, 0.25])
    y = label_targets(batch, labels, C, torch.device("cpu"))
    assert torch.allclose(y[0], torch.tensor([0.0, 1, 0, 0]))                # sample 4: label 1
    assert torch.allclose(y[1], torch.tensor([0.75, 0, 0.25, 0]))            # 0.25·label 2 + 0.75·partner's 0
    t = CachedTargets(teacher)(batch, batch.images)
    assert torch.equal(t["logits"], torch.as_tensor(teacher["logits"][[4, 2]]))  # rows by sample index
    assert t["argmax"].tolist() == [3, 1]
    assert label_targets(_batch([1]), labels, C, torch.device("cpu")).argmax().item() == 1


def test_a_merged_batch_takes_each_slots_cached_targets_in_order():
    """Repeated views: slots 0 and 1 of the same samples in one batch, each slot's rows from its own view."""
    from dataclasses import replace

    from kdcache._views import merge_batches, split_batch

    views = [{"logits": np.arange(5 * C, dtype=np.float16).reshape(5, C) + 100 * j,
              "argmax": np.array([3, 2, 1, 0, 3]) if j == 0 else np.array([0, 1, 2, 3, 0])} for j in range(2)]
    slots = [replace(_batch([4, 2]), slot=j) for j in range(2)]
    merged = merge_batches(slots)
    assert merged.parts == (2, 2) and merged.indices.tolist() == [4, 2, 4, 2] and merged.images.shape[0] == 4
    assert [b.slot for b in split_batch(merged)] == [0, 1]
    assert torch.equal(split_batch(merged)[1].images, slots[1].images)
    t = CachedTargets(views)(merged, merged.images)
    want = np.concatenate([views[0]["logits"][[4, 2]], views[1]["logits"][[4, 2]]])
    assert torch.equal(t["logits"], torch.as_tensor(want))
    assert t["argmax"].tolist() == [3, 1, 0, 2]


class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, C)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _learnable(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    imgs = torch.randn(n, 3, 6, 6, generator=g) * 0.1
    imgs[torch.arange(n), labels % 3, 0, labels] += 3.0  # a class-specific bright pixel
    return imgs, labels.numpy()


def test_train_one_epoch_learns_and_reports_parts_and_agreement():
    imgs, labels = _learnable()
    batches = []
    for s in range(0, len(labels), 16):
        idx = np.arange(s, s + 16)
        b = _batch(idx.tolist())
        b.images = imgs[idx]
        batches.append(b)
    # a perfect teacher: logits favour the true class
    logits = np.full((len(labels), C), -2.0, np.float16)
    logits[np.arange(len(labels)), labels] = 4.0
    teacher = {"logits": logits, "argmax": labels.astype(np.int8)}
    torch.manual_seed(0)
    model = _Lin()
    loss_fn = DistillationLoss(LossConfig(distill="soft", alpha=0.5, temperature=2.0), C)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = train_one_epoch(model, batches, loss_fn=loss_fn, optimizer=opt, scheduler=None,
                            device=torch.device("cpu"), labels=labels, teacher_targets=teacher, progress=False)
    for _ in range(5):
        last = train_one_epoch(model, batches, loss_fn=loss_fn, optimizer=opt, scheduler=None,
                               device=torch.device("cpu"), labels=labels, teacher_targets=teacher, progress=False)
    assert {"loss", "task_loss", "kd_loss", "images", "images_per_second", "lr", "teacher_agreement"} <= set(last)
    assert first["images"] == len(labels)
    assert last["loss"] < first["loss"] and last["teacher_agreement"] > 0.9
    ev = evaluate(model, [(imgs, torch.as_tensor(labels))], device=torch.device("cpu"))
    assert ev["top1"] > 90 and ev["images"] == len(labels)
    # max_steps stops early; a diverging loss is an error, not a silent NaN run
    part = train_one_epoch(model, batches, loss_fn=loss_fn, optimizer=opt, scheduler=None,
                           device=torch.device("cpu"), labels=labels, teacher_targets=teacher, progress=False,
                           max_steps=2)
    assert part["images"] == 32
    bad = _batch([0, 1])
    bad.images = torch.full((2, 3, 6, 6), float("nan"))
    with pytest.raises(KdcacheError, match="loss became nan"):
        train_one_epoch(model, [bad], loss_fn=loss_fn, optimizer=opt, scheduler=None, device=torch.device("cpu"),
                        labels=labels, teacher_targets=teacher, progress=False)


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, steps_per_epoch=10, epochs=5, warmup_epochs=1, min_lr=0.01)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)                       # start_factor 1e-3
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))     # rising through warm-up
    assert lrs[10] == pytest.approx(1.0)                       # peak after 10 warm-up steps
    cos = [0.01 + (1 - 0.01) * (1 + math.cos(math.pi * t / 40)) / 2 for t in range(40)]
    assert lrs[10:] == pytest.approx(cos, rel=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    opt2 = torch.optim.SGD([p], lr=1.0)
    none = build_scheduler(opt2, steps_per_epoch=4, epochs=2, warmup_epochs=0, min_lr=0.0)
    assert isinstance(none, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_model_arguments_are_yaml_scalars_and_bad_ones_are_config_errors():
    assert parse_model_args(["small_input=true", "drop_path_rate=0.1", "depths=[2, 2]", "name=vit", "x="]) == {
        "small_input": True, "drop_path_rate": 0.1, "depths": [2, 2], "name": "vit", "x": None}
    for bad in (["novalue"], ["=3"], ["a=[1, 2"]):
        with pytest.raises(ConfigError):
            parse_model_args(bad)
