"""The recipe options of the training loop and runs: optimisers and their decay groups, model EMA,
gradient accumulation, precision, channels-last, compile, and the loop's device read-backs."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from kdcache._views import ViewBatch
from kdcache.augment import ViewParams
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.errors import ConfigError
from kdcache.models import create_model
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import DistillationLoss, LossConfig, TrainConfig, train_one_epoch, train_student
from kdcache.train._ema import ModelEma, ema_decay_at
from kdcache.train._optim import build_optimizer, no_decay_names, param_groups, scaled_lr

C = 4


def _batch(indices, size=6, seed=None) -> ViewBatch:
    params = [ViewParams(crop=(0, 0, size, size), flip=False, mix_kind=0, partner=-1, lam=1.0) for _ in indices]
    g = torch.Generator().manual_seed(int(sum(indices)) if seed is None else seed)
    return ViewBatch(indices=np.asarray(indices), views=np.zeros(len(indices), np.int64),
                     seeds=np.zeros(len(indices), np.int64), params=params,
                     images=torch.randn(len(indices), 3, size, size, generator=g))


def _cat(batches: list[ViewBatch]) -> ViewBatch:
    return ViewBatch(indices=np.concatenate([b.indices for b in batches]),
                     views=np.concatenate([b.views for b in batches]), seeds=np.concatenate([b.seeds for b in batches]),
                     params=[p for b in batches for p in b.params], images=torch.cat([b.images for b in batches]))


class _Lin(nn.Module):  # no batch norm: accumulated gradients equal one big batch's
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, C)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _epoch(model, batches, opt, **kw):
    labels = np.arange(64) % C
    return train_one_epoch(model, batches, loss_fn=DistillationLoss(LossConfig(distill="none"), C), optimizer=opt,
                           scheduler=None, device=torch.device("cpu"), labels=labels, progress=False, **kw)


# -- optimisers --------------------------------------------------------------------------------------------


def test_no_weight_decay_on_norms_biases_and_tokens():
    cnn = create_model("cnn_tiny", num_classes=3)
    skip = no_decay_names(cnn)
    for name, p in cnn.named_parameters():
        assert (name in skip) == (p.ndim <= 1), name  # BN weights/biases and conv/linear biases only
    vit = create_model("deit_test_distilled", num_classes=3)
    skip = no_decay_names(vit)
    assert {"cls_token", "dist_token", "pos_embed"} <= skip
    assert {n for n in skip if n.endswith(".bias")} == {n for n, _ in vit.named_parameters() if n.endswith(".bias")}
    assert any("norm" in n and n.endswith(".weight") for n in skip)
    assert "patch_embed.proj.weight" not in skip and "head.weight" not in skip
    decay, no_decay = param_groups(vit, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    n_params = len(list(vit.parameters()))
    assert len(decay["params"]) + len(no_decay["params"]) == n_params

    sgd = build_optimizer(vit, "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in sgd.param_groups)
    adamw = build_optimizer(cnn, "adamw", lr=1e-3, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    assert scaled_lr(5e-4, 1024, True) == pytest.approx(1e-3) and scaled_lr(5e-4, 1024, False) == 5e-4


def test_a_decayed_step_leaves_norms_and_biases_alone():
    model = create_model("cnn_tiny", num_classes=3)
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.5, momentum=0.0)
    before = copy.deepcopy(model.state_dict())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only the decay moves a parameter
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (p.ndim > 1 and p.abs().sum() > 0), name


def test_timm_optimizers_by_name_and_unknown_names():
    pytest.importorskip("timm")
    model = create_model("cnn_tiny", num_classes=3)
    lamb = build_optimizer(model, "lamb", lr=1e-3, weight_decay=0.02)
    assert type(lamb).__name__ == "Lamb" and [g["weight_decay"] for g in lamb.param_groups] == [0.02, 0.0]
    with pytest.raises(ConfigError, match="unknown optimizer 'nope'"):
        build_optimizer(model, "nope", lr=1e-3, weight_decay=0.0)


@pytest.mark.parametrize("bad, match", [
    (dict(precision="fp8"), "precision"), (dict(accum_steps=0), "accum_steps"), (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_decay=0.0), "ema_decay"), (dict(ema_select=True), "needs `ema_decay`"),
    (dict(nesterov=True), "nesterov"), (dict(amp=True, precision="bf16"), "exclude"),
    (dict(momentum=1.0), "momentum")])
def test_bad_recipe_values_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(data=DataConfig(source="hdf5:x.h5"), out="o", model="cnn_tiny", **bad)


# -- EMA --------------------------------------------------------------------------------------------------


def test_ema_equals_a_reference_computed_by_hand():
    torch.manual_seed(0)
    model = _Lin()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots: list[torch.Tensor] = []
    opt.register_step_post_hook(lambda *_: snapshots.append(torch.cat([p.detach().flatten().clone()
                                                                       for p in model.parameters()])))
    ema = ModelEma(model, decay=0.8, warmup=True)
    batches = [_batch(list(range(i * 8, i * 8 + 8))) for i in range(5)]
    _epoch(model, batches, opt, ema=ema)
    assert ema.updates == 5 and len(snapshots) == 5
    ref = snapshots[0]  # the first update copies the model
    for t in range(1, 5):
        d = min(0.8, (1 + t) / (10 + t))
        ref = d * ref + (1 - d) * snapshots[t]
    got = torch.cat([p.flatten() for p in ema.module.parameters()])
    assert torch.allclose(got, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(got, snapshots[-1], atol=1e-4)  # not simply the model
    assert ema_decay_at(0, 0.9999, True) == 0.1 and ema_decay_at(10**6, 0.9999, True) == 0.9999
    assert ema_decay_at(0, 0.9999, False) == 0.9999
    with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
        ModelEma(model, decay=1.5)


def _cache(tmp_path, tiny_h5, teacher) -> str:
    out = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=out, teacher=TeacherSpec(weights=teacher),
                            views=3, view={"size": 32}, workers=0, block_size=16), progress=False,
                 log=lambda _m: None)
    return out


def test_resume_with_ema_is_bit_exact_and_ema_select_saves_the_ema(tmp_path, tiny_h5, tiny_teacher, monkeypatch):
    from kdcache.train import _run as runner

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", cache=cache, batch_size=16, workers=0,
                val_split="test", epochs=3, ema_decay=0.9, ema_select=True, optimizer="sgd", lr=0.05,
                nesterov=True, weight_decay=5e-4)
    train_student(TrainConfig(out=str(tmp_path / "full"), **base), progress=False, log=lambda _m: None)

    real_end = runner.Run.end_epoch

    def crash_after_first_epoch(self, epoch, *a, **k):
        real_end(self, epoch, *a, **k)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner.Run, "end_epoch", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_student(TrainConfig(out=str(tmp_path / "cut"), **base), progress=False, log=lambda _m: None)
    monkeypatch.setattr(runner.Run, "end_epoch", real_end)
    train_student(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base), progress=False, log=lambda _m: None)
    full_model, full = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    cut_model, cut = load_checkpoint(str(tmp_path / "cut" / "last.pt"))
    assert cut["ema"]["updates"] == full["ema"]["updates"] == 9  # 3 steps × 3 epochs
    for (k, a), (_, b) in zip(full_model.state_dict().items(), cut_model.state_dict().items()):
        assert torch.equal(a, b), k  # the checkpoint's model: the EMA
    for k, a in full["raw_state_dict"].items():
        assert torch.equal(a, cut["raw_state_dict"][k]), k  # the trained weights
    differs = [k for k, a in full["raw_state_dict"].items() if a.is_floating_point()
               and not torch.equal(a, full_model.state_dict()[k])]
    assert differs  # the saved model is the average, not the trained weights
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert all("val/ema_top1" in r and "val/top1" in r for r in rows)
    _, best = load_checkpoint(str(tmp_path / "full" / "best.pt"))
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert best["best_top1"] == max(r["val/ema_top1"] for r in rows)  # best.pt chosen by the EMA's score
    assert full["optimizer"]["param_groups"][0]["nesterov"] is True
    # resuming with an EMA from a run without one is refused
    plain = dict(base, ema_decay=None, ema_select=False, epochs=1)
    train_student(TrainConfig(out=str(tmp_path / "plain"), **plain), progress=False, log=lambda _m: None)
    with pytest.raises(Exception, match="without an EMA"):
        train_student(TrainConfig(out=str(tmp_path / "plain"), resume=True, **dict(base, epochs=2)),
                      progress=False, log=lambda _m: None)


def test_cifar_resnet_recipe_runs_sgd_nesterov_with_channels_last_and_bf16(tmp_path, tiny_h5, tiny_teacher):
    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "r20"), model="cifar_resnet20",
                      cache=cache, epochs=1, batch_size=16, workers=0, val_split="test", optimizer="sgd",
                      momentum=0.9, nesterov=True, lr=0.1, weight_decay=5e-4, channels_last=True, precision="bf16",
                      ema_decay=0.99)
    out = train_student(cfg, progress=False, log=lambda _m: None)
    assert out["best_top1"] is not None
    _, extra = load_checkpoint(str(tmp_path / "r20" / "last.pt"))
    groups = extra["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0] and groups[0]["nesterov"] and groups[0]["momentum"] == 0.9
    assert math.isfinite(extra["metrics"]["train/loss"]) and "ema" in extra and "state_dict" in extra["ema"]


# -- accumulation, precision, channels-last, compile, read-backs ------------------------------------------


def test_k_accumulated_steps_equal_one_k_times_batch():
    torch.manual_seed(0)
    a = _Lin()
    b = copy.deepcopy(a)
    small = [_batch(list(range(i * 4, i * 4 + 4))) for i in range(4)]
    _epoch(a, small, torch.optim.SGD(a.parameters(), lr=0.3, momentum=0.9), accum_steps=4)
    _epoch(b, [_cat(small)], torch.optim.SGD(b.parameters(), lr=0.3, momentum=0.9))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-6)
    # a short last group is the mean of the batches it has: 6 batches with K=4 = one of 4, then one of 2
    c, d = _Lin(), None
    d = copy.deepcopy(c)
    six = [_batch(list(range(i * 4, i * 4 + 4))) for i in range(6)]
    _epoch(c, six, torch.optim.SGD(c.parameters(), lr=0.3), accum_steps=4)
    _epoch(d, [_cat(six[:4]), _cat(six[4:])], torch.optim.SGD(d.parameters(), lr=0.3))
    for pc, pd in zip(c.parameters(), d.parameters()):
        assert torch.allclose(pc, pd, rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_on_cpu(precision, dtype):
    torch.manual_seed(0)
    model = _Lin()
    seen = []
    model.fc.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    before = model.fc.weight.detach().clone()
    stats = _epoch(model, [_batch(list(range(8)))] * 3, opt, precision=precision, scaler=scaler)
    assert set(seen) == {dtype} and math.isfinite(stats["loss"])
    assert not torch.equal(before, model.fc.weight.detach())
    assert model.fc.weight.dtype == torch.float32  # master weights stay fp32


def test_channels_last_input_reaches_the_model():
    model = create_model("cnn_tiny", num_classes=C).to(memory_format=torch.channels_last)
    formats = []
    model.register_forward_pre_hook(lambda _m, args: formats.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    _epoch(model, [_batch(list(range(8)), size=16)] * 2, torch.optim.SGD(model.parameters(), lr=0.1),
           channels_last=True)
    assert formats == [True, True]


def test_one_device_read_back_per_logging_interval(monkeypatch):
    model = _Lin()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    teacher = {"logits": np.random.default_rng(0).normal(size=(64, C)).astype(np.float16),
               "argmax": np.zeros(64, np.int64)}
    calls: list[str] = []
    def counted(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            calls.append(name)
            return real(self, *a, **k)
        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    batches = [_batch(list(range(i * 4, i * 4 + 4))) for i in range(10)]
    labels = np.arange(64) % C
    stats = train_one_epoch(model, batches, loss_fn=DistillationLoss(LossConfig(), C), optimizer=opt,
                            scheduler=None, device=torch.device("cpu"), labels=labels, teacher_targets=teacher,
                            progress=False, log_interval=4)
    monkeypatch.undo()
    assert calls == ["tolist"] * 3, calls  # after steps 4 and 8, and at the end (10)
    assert stats["images"] == 40 and 0 <= stats["teacher_agreement"] <= 1
    assert stats["steady_images_per_second"] > 0  # from the first read-back (step 4) to the end


def test_compile_a_tiny_student(tmp_path, tiny_h5):
    """torch.compile through dynamo and AOT autograd (backend aot_eager): inductor's C++ code generation
    takes about 50 s for cnn_tiny on this 2-core machine, so it runs in the CUDA tests (bench/gpu.py)."""
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "c"), model="cnn_tiny", epochs=1,
                      batch_size=16, workers=0, val_split=None, compile=True, compile_backend="aot_eager")
    from kdcache.train import train_teacher

    out = train_teacher(cfg, progress=False, log=lambda _m: None)
    _, extra = load_checkpoint(out["last"])
    assert math.isfinite(extra["metrics"]["train/loss"])


def test_compile_where_it_cannot_run_is_one_line(tmp_path, tiny_h5, monkeypatch):
    import torch._dynamo

    from kdcache.train import train_teacher

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "c"), model="cnn_tiny", epochs=1,
                      batch_size=16, workers=0, val_split=None, compile=True)
    with pytest.raises(ConfigError, match="torch.compile is not supported"):
        train_teacher(cfg, progress=False, log=lambda _m: None)
    assert not (tmp_path / "c").exists()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="'nope' is not one of torch.compile's backends"):
        train_teacher(replace(cfg, compile_backend="nope"), progress=False, log=lambda _m: None)


# -- the command line ---------------------------------------------------------------------------------------


def test_cli_recipe_flags_and_bad_values_are_one_line(tmp_path, tiny_h5, tiny_teacher):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    r = CliRunner()
    base = ["train-student", "--data", tiny_h5, "--cache", cache, "--student", "cnn_tiny", "--epochs", "1",
            "--workers", "0", "--no-progress", "--batch-size", "8"]
    for args, needle in ((["--accum-steps", "0"], "--accum-steps"), (["--precision", "fp8"], "--precision"),
                         (["--ema-decay", "1.5"], "ema-decay"), (["--ema-decay", "0"], "ema-decay"),
                         (["--optimizer", "nope"], "unknown optimizer 'nope'"),
                         (["--nesterov"], "nesterov"), (["--ema-select"], "ema-decay")):
        res = r.invoke(cli, [*base, "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code != 0 and isinstance(res.exception, SystemExit), (args, res.output)
        errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output, (args, res.output)
        assert not (tmp_path / "bad").exists()
    run = tmp_path / "ok"
    res = r.invoke(cli, [*base, "--out", str(run), "--optimizer", "sgd", "--lr", "0.1", "--nesterov",
                         "--weight-decay", "5e-4", "--accum-steps", "2", "--ema-decay", "0.9", "--precision", "bf16",
                         "--channels-last", "--scale-lr", "--val-split", "test"])
    assert res.exit_code == 0, res.output
    _, extra = load_checkpoint(str(run / "last.pt"))
    c = extra["config"]
    assert (c["optimizer"], c["nesterov"], c["accum_steps"], c["ema_decay"], c["precision"], c["channels_last"]) == (
        "sgd", True, 2, 0.9, "bf16", True)
    assert extra["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.1 * 16 / 512)  # 8 × 2 / 512
    raw = r.invoke(cli, ["evaluate", str(run / "last.pt"), "--data", tiny_h5, "--workers", "0", "--json"])
    ema = r.invoke(cli, ["evaluate", str(run / "last.pt"), "--data", tiny_h5, "--workers", "0", "--json", "--ema"])
    assert raw.exit_code == 0 and ema.exit_code == 0, raw.output + ema.output
    assert json.loads(ema.output)["top1"] == extra["metrics"]["val/ema_top1"]
    assert json.loads(raw.output)["top1"] == extra["metrics"]["val/top1"]


def test_resume_refuses_another_optimiser_and_an_optimiser_state_that_does_not_fit(tmp_path, tiny_h5, tiny_teacher):
    cache = _cache(tmp_path, tiny_h5, tiny_teacher)
    base = dict(data=DataConfig(source=tiny_h5), model="cnn_tiny", cache=cache, batch_size=16, workers=0,
                val_split=None, epochs=1)
    out = tmp_path / "run"
    train_student(TrainConfig(out=str(out), **base), progress=False, log=lambda _m: None)
    more = dict(base, epochs=2)
    # another optimiser would load (same groups) and continue silently as a different run
    with pytest.raises(Exception, match=r"other optimiser options \(`optimizer` 'adamw' there, 'sgd' here") as e:
        train_student(TrainConfig(out=str(out), resume=True, **dict(more, optimizer="sgd")),
                      progress=False, log=lambda _m: None)
    assert "rerun with `resume`" not in str(e.value)  # it was a resume: that advice would be circular
    with pytest.raises(Exception, match=r"`weight_decay` 0.05 there, 0.0 here"):
        train_student(TrainConfig(out=str(out), resume=True, **dict(more, weight_decay=0.0)),
                      progress=False, log=lambda _m: None)
    # a checkpoint of a kdcache that put every parameter in one group (before the no-decay rule)
    state = torch.load(out / "last.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    state["optimizer"]["param_groups"] = [dict(groups[0], params=[p for g in groups for p in g["params"]])]
    torch.save(state, out / "last.pt")
    with pytest.raises(Exception, match=r"does not fit this run's optimiser \(1 parameter group\(s\) there, 2 here"):
        train_student(TrainConfig(out=str(out), resume=True, **more), progress=False, log=lambda _m: None)


def test_constant_schedule_and_decay_of_every_parameter(tmp_path, tiny_h5):
    """--sched constant holds --lr after the warm-up; --decay-rule all decays norms and biases too (Keras/TFA)."""
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    from kdcache.train._optim import build_scheduler

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1, "all")
    assert len(decay["params"]) == 4 and not no_decay["params"]
    assert len(param_groups(model, 0.1)[0]["params"]) == 1  # timm's rule: the linear's weight only
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = build_scheduler(opt, "constant", steps_per_epoch=10, epochs=3, warmup_epochs=1.0, min_lr=1e-5)
    lrs = []
    for _ in range(30):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] < 2e-4 and all(lr == pytest.approx(1e-3) for lr in lrs[9:])
    r = CliRunner()
    out = tmp_path / "k"
    res = r.invoke(cli, ["train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16", "--epochs", "2",
                         "--workers", "0", "--no-progress", "--batch-size", "16", "--out", str(out), "--sched",
                         "constant", "--warmup-epochs", "0", "--decay-rule", "all", "--weight-decay", "0.1"])
    assert res.exit_code == 0, res.output
    _, extra = load_checkpoint(str(out / "last.pt"))
    assert (extra["config"]["sched"], extra["config"]["decay_rule"]) == ("constant", "all")
    groups = extra["optimizer"]["param_groups"]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1 and groups[0]["lr"] == pytest.approx(1e-3)
    bad = r.invoke(cli, ["train-teacher", "--data", tiny_h5, "--teacher", "cnn_tiny", "--out", str(tmp_path / "b"),
                         "--sched", "step"])
    assert bad.exit_code == 2 and "--sched" in bad.output
