"""The GPU paths, on a CUDA device (marker ``cuda``: skipped elsewhere; ``bench/gpu.py`` runs them first):
dump and training on ``cuda``, bf16 and fp16, channels-last, torch.compile (inductor), EMA, replay exactness
of a cache dumped on the GPU, and DDP over NCCL on one device (accumulation's no_sync)."""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.engine._verify import verify_cache
from kdcache.models._checkpoint import load_checkpoint
from kdcache.train import DistillationLoss, LossConfig, TrainConfig, train_one_epoch, train_student

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda_cache(tmp_path, tiny_h5, tiny_teacher) -> str:
    out = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=out, teacher=TeacherSpec(weights=tiny_teacher),
                            views=4, view={"size": 32}, workers=2, block_size=16, device="cuda"),
                 progress=False, log=lambda _m: None)
    return out


def test_a_cache_dumped_on_cuda_replays_exactly(cuda_cache, tiny_teacher):
    report = verify_cache(cuda_cache, TeacherSpec(weights=tiny_teacher), samples=48, device="cuda")
    assert report["ok"], report["failures"]
    report = verify_cache(cuda_cache, TeacherSpec(weights=tiny_teacher), samples=48, device="cpu")
    assert report["ok"], report["failures"]  # GPU targets replay on the CPU within tolerance


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_with_each_precision_channels_last_and_ema(tmp_path, tiny_h5, cuda_cache, precision):
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / precision), model="cifar_resnet20",
                      cache=cuda_cache, epochs=2, batch_size=16, workers=2, device="cuda", precision=precision,
                      channels_last=True, ema_decay=0.9, optimizer="sgd", lr=0.05, nesterov=True,
                      weight_decay=5e-4, accum_steps=2)
    out = train_student(cfg, progress=False, log=lambda _m: None)
    _, extra = load_checkpoint(out["last"])
    assert math.isfinite(extra["metrics"]["train/loss"]) and "val/ema_top1" in extra["metrics"]
    assert ("scaler" in extra) == (precision == "fp16")
    assert extra["ema"]["updates"] == 2 * 2  # 3 batches per epoch, 2 per step: 2 steps per epoch


def test_compile_with_inductor_on_cuda(tmp_path, tiny_h5, cuda_cache):
    for model in ("cnn_tiny", "deit_test_distilled"):
        cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / model), model=model, cache=cuda_cache,
                          epochs=1, batch_size=16, workers=0, device="cuda", precision="bf16", compile=True,
                          loss=LossConfig(distill="hard"))
        out = train_student(cfg, progress=False, log=lambda _m: None)
        rows = [json.loads(x) for x in open(os.path.join(out["out"], "metrics.jsonl"))]
        assert math.isfinite(rows[-1]["train/loss"])


def test_online_teacher_on_cuda(tmp_path, tiny_h5, tiny_teacher, cuda_cache):
    cfg = TrainConfig(data=DataConfig(source=tiny_h5), out=str(tmp_path / "on"), model="cnn_tiny", cache=cuda_cache,
                      teacher=TeacherSpec(weights=tiny_teacher), epochs=1, batch_size=16, workers=2, device="cuda",
                      precision="bf16", channels_last=True)
    out = train_student(cfg, progress=False, log=lambda _m: None)
    _, extra = load_checkpoint(out["last"])
    assert 0 <= extra["metrics"]["train/teacher_agreement"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_nccl_on_one_device_with_accumulation():
    import torch.distributed as dist
    from torch import nn

    from kdcache._views import ViewBatch
    from kdcache.augment import ViewParams

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).cuda()
        ref = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).cuda()
        ref.load_state_dict(model.state_dict())
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        g = torch.Generator().manual_seed(0)
        params = [ViewParams(crop=(0, 0, 8, 8), flip=False, mix_kind=0, partner=-1, lam=1.0)] * 4
        batches = [ViewBatch(indices=np.arange(i * 4, i * 4 + 4), views=np.zeros(4, np.int64),
                             seeds=np.zeros(4, np.int64), params=params, images=torch.randn(4, 3, 8, 8, generator=g))
                   for i in range(4)]
        labels = np.arange(16) % 4
        loss = DistillationLoss(LossConfig(distill="none"), 4)
        kw = dict(loss_fn=loss, scheduler=None, device=torch.device("cuda"), labels=labels, progress=False)
        train_one_epoch(ddp, batches, optimizer=torch.optim.SGD(ddp.parameters(), lr=0.3), accum_steps=2, **kw)
        train_one_epoch(ref, batches, optimizer=torch.optim.SGD(ref.parameters(), lr=0.3), accum_steps=2, **kw)
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, atol=1e-5)
    finally:
        dist.destroy_process_group()
