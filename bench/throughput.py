"""Throughput side by side: plain training, kdcache cached training (M views per decode), online KD; the dump
against pure teacher inference; reading an epoch's targets.

Modes are measured in alternating rounds (a b c a b c ...) in one process so the machine's noise hits them
alike; each figure is the median over rounds, and ratios are taken between medians.

* ``plain``     — a plain PyTorch loop: torchvision ``ImageFolder`` (``folder:``) or the HDF5 arrays, v2
  RandomResizedCrop + flip + normalise in the same workers, the same student, batch size, AdamW, CE loss.
* ``cached``    — kdcache's loop replaying cached views with cached targets (``train-student``);
  ``cached-m4`` the same with ``--views-per-image 4`` (one decode feeds 4 batches).
* ``online``    — kdcache's loop with the teacher run on fresh views every step (``--online-teacher``).
* ``step-only`` (``--step-only``) — the student's training step alone, on one batch already in memory (no
  decoding, no loader): the ceiling any data path can reach on this machine.
* ``dump`` / ``infer`` — views/s of ``dump-teacher`` into a new cache against the teacher's pure inference on
  the same views (same batch size and workers): goal P3, dump ≥ 0.9 × infer.
* ``read``      — one epoch's targets read from a synthetic cache (C classes, full float16 and top-10):
  goal P5, ≥ 1 M views/s.
* ``data``      — the data path alone (decode, replay, targets, collate; no student): kdcache's cached epoch
  with 1 and ``--views-per-image`` views per decode (``data-m1``, ``data-mM``) against the plain loader
  (``data-plain``: ``ImageFolder``-style decode + v2 RandomResizedCrop + flip + normalise). Images/s per
  worker core are these rates over ``--workers``.

``--ema-decay D`` and ``--channels-last`` turn the model EMA and channels-last on in every training mode
(the plain loop updates the same ``ModelEma``).

    python bench/make_jpeg_folder.py --out bench/work/jpeg100
    python bench/throughput.py --data folder:bench/work/jpeg100 --size 224 --teacher resnet50 \\
        --student resnet18 --limit 2000 --rounds 3 --json bench/results/throughput_jpeg.json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from _common import alternate, run, write_json
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from kdcache._orphans import exit_with_parent
from kdcache._runtime import DistContext
from kdcache._views import (
    BlockBatches,
    ViewBatch,
    ViewDraws,
    identity_collate,
    resolve_view_spec,
)
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheIdentity, CacheStore, TargetMode, UnitLayout
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, build_teacher, dump_teacher
from kdcache.models import create_model
from kdcache.train import DistillationLoss, LossConfig, TrainConfig, epoch_views, train_one_epoch
from kdcache.train._ema import ModelEma
from kdcache.train._epochs import cached_epochs
from kdcache.train._feature import StudentWithFeatures
from kdcache.train._stream import StreamedTargets, plan_epoch, store_window
from kdcache.train._targets import OnlineTargets


class PlainDataset(Dataset):
    """The plain baseline's dataset: decode + torchvision v2 transforms per item, as a typical script does."""

    def __init__(self, ds, spec: ViewSpec):
        self.ds = ds
        self.tf = v2.Compose([
            v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
            v2.RandomHorizontalFlip(spec.flip_prob), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std)])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        image, label = self.ds[i]
        return self.tf(image), label


def plain_rate(ds, spec, student_name, args) -> float:
    loader = DataLoader(PlainDataset(ds, spec), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, drop_last=True, worker_init_fn=exit_with_parent())
    model = _student(student_name, ds, args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = ModelEma(model, decay=args.ema_decay) if args.ema_decay else None
    model.train()
    t0, n = time.perf_counter(), 0
    for step, (x, y) in enumerate(loader):
        if step >= args.steps:
            break
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)
        n += len(y)
    return n / (time.perf_counter() - t0)


def _student(name: str, ds, args) -> nn.Module:
    model = create_model(name, num_classes=ds.num_classes)
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


def step_only_rate(ds, student_name, args) -> float:
    """The student's forward + backward + AdamW step on one in-memory batch, ``--steps`` times."""
    model = create_model(student_name, num_classes=ds.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g)
    y = torch.randint(0, ds.num_classes, (args.batch_size,), generator=g)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def kdcache_rate(loader, targets, ds, student_name, args, steps: int, loss: LossConfig | None = None,
                 feature_dim: int | None = None) -> float:
    model = _student(student_name, ds, args)
    if feature_dim is not None:  # feature KD: the student with its projection head, trained together
        model = StudentWithFeatures(model, feature_dim, args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ema = ModelEma(model, decay=args.ema_decay) if args.ema_decay else None
    t0 = time.perf_counter()
    loss = loss or LossConfig(distill="soft")
    stats = train_one_epoch(model, loader, loss_fn=DistillationLoss(loss, ds.num_classes),
                            optimizer=opt, scheduler=None, device=torch.device("cpu"),
                            labels=np.asarray(ds.labels), teacher_targets=targets, progress=False, max_steps=steps,
                            ema=ema, channels_last=args.channels_last)
    return stats["images"] / (time.perf_counter() - t0)


def batches(n: int, bs: int, seed: int) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return [perm[i:i + bs] for i in range(0, n - bs + 1, bs)]


def training_modes(ds, data: DataConfig, cache: str, spec: ViewSpec, teacher, args):
    pipeline = ViewPipeline(spec)
    store = CacheStore.open(cache)
    ctx = DistContext.from_env("cpu")

    def cached(r: int, m: int, features: bool = False) -> float:
        # train-student's own epoch: plan, replay parameters and streamed targets (kdcache.train._epochs)
        loss = LossConfig(distill="soft", feature_weight=1.0 if features else 0.0)
        cfg = TrainConfig(data=data, out="-", model=args.student, cache=cache, epochs=m, batch_size=args.batch_size,
                          workers=args.workers, device="cpu", seed=r, views_per_image=m, loss=loss)
        loader, targets = cached_epochs(store, ds, pipeline, cfg, ctx, False)(0)
        try:
            return kdcache_rate(loader, targets, ds, args.student, args, args.steps * m, loss,
                                store.layout.embedding_dim if features else None)
        finally:
            targets.close()

    def online(r: int) -> float:
        draws = ViewDraws(ds, pipeline, 0)
        loader = DataLoader(draws, batch_sampler=[[(i, r) for i in b] for b in batches(len(ds), args.batch_size, r)],
                            num_workers=args.workers, collate_fn=identity_collate,
                            worker_init_fn=exit_with_parent())
        return kdcache_rate(loader, OnlineTargets(teacher.model), ds, args.student, args, args.steps)

    modes = {"plain": lambda r: plain_rate(ds, spec, args.student, args),
             "cached": lambda r: cached(r, 1),
             f"cached-m{args.views_per_image}": lambda r: cached(r, args.views_per_image)}
    if args.feature:  # logit and feature KD from the cache's embedding (a learned projection): goal ≥ 0.97 cached
        modes["cached-feature"] = lambda r: cached(r, 1, features=True)
    if not args.no_online:
        modes["online"] = online
    if args.step_only:
        modes["step-only"] = lambda r: step_only_rate(ds, args.student, args)
    return modes


def data_modes(ds, data: DataConfig, cache: str, spec: ViewSpec, args) -> dict:
    """The data path alone: batches of views with their targets (kdcache) or labels (plain), no student."""
    pipeline = ViewPipeline(spec)
    store = CacheStore.open(cache)
    ctx = DistContext.from_env("cpu")

    def kdcache_path(r: int, m: int) -> float:
        cfg = TrainConfig(data=data, out="-", model=args.student, cache=cache, epochs=m, batch_size=args.batch_size,
                          workers=args.workers, device="cpu", seed=r, views_per_image=m)
        loader, targets = cached_epochs(store, ds, pipeline, cfg, ctx, False)(0)
        t0, n = time.perf_counter(), 0
        try:
            for step, batch in enumerate(loader):
                if step >= args.steps * m:
                    break
                targets(batch, batch.images)
                n += len(batch.indices)
        finally:
            targets.close()
        return n / (time.perf_counter() - t0)

    def plain_path(r: int) -> float:
        g = torch.Generator().manual_seed(r)
        loader = DataLoader(PlainDataset(ds, spec), batch_size=args.batch_size, shuffle=True, generator=g,
                            num_workers=args.workers, drop_last=True, worker_init_fn=exit_with_parent())
        t0, n = time.perf_counter(), 0
        for step, (x, _y) in enumerate(loader):
            if step >= args.steps:
                break
            n += x.shape[0]
        return n / (time.perf_counter() - t0)

    m = args.views_per_image
    return {"data-plain": plain_path, "data-m1": lambda r: kdcache_path(r, 1),
            f"data-m{m}": lambda r: kdcache_path(r, m)}


def dump_modes(data: DataConfig, teacher_spec: TeacherSpec, ds, spec: ViewSpec, teacher, args, tmp: str):
    pipeline = ViewPipeline(spec)
    n_blocks = -(-len(ds) // args.block_size)
    work = [(b, list(range(args.views))) for b in range(n_blocks)]

    def bounds(b: int):
        return b * args.block_size, min((b + 1) * args.block_size, len(ds))

    def infer(r: int) -> float:
        loader = DataLoader(ViewDraws(ds, pipeline, r), batch_sampler=BlockBatches(work, bounds, args.batch_size),
                            num_workers=args.workers, collate_fn=identity_collate,
                            worker_init_fn=exit_with_parent())
        t0, n = time.perf_counter(), 0
        with torch.inference_mode():
            for batch in loader:
                teacher.model(batch.images)
                n += len(batch.indices)
        return n / (time.perf_counter() - t0)

    def dump(r: int) -> float:
        cfg = DumpConfig(data=data, out=os.path.join(tmp, f"dump{r}.zarr"), teacher=teacher_spec, views=args.views,
                         seed=r, view={"size": spec.size, "preset": args.view_preset}, batch_size=args.batch_size,
                         workers=args.workers,
                         block_size=args.block_size, device="cpu")
        t0 = time.perf_counter()
        s = dump_teacher(cfg, progress=False, log=lambda _m: None)
        return s.views_computed / (time.perf_counter() - t0)

    return {"infer": infer, "dump": dump}


def synthetic_cache(tmp: str, n: int, classes: int, views: int, targets: str, block: int) -> str:
    """A cache of ``n`` samples with random (incompressible) logits: the worst case for reading."""
    mode = TargetMode.parse(targets)
    ident = CacheIdentity(teacher={"name": "synthetic"}, dataset={"kind": "synthetic", "split": "train",
                                                                   "manifest_sha256": "0"},
                          view_spec={}, seed=0, targets=str(mode))
    layout = UnitLayout.build(mode, classes, {"crop": ((4,), "int16"), "flip": ((), "bool")})
    path = os.path.join(tmp, f"read_{n}_{targets.replace(':', '')}.zarr")
    store = CacheStore.create(path, identity=ident, keys=[str(i) for i in range(n)], labels=np.zeros(n),
                              num_classes=classes, num_views=views, layout=layout, attrs={}, block_size=block)
    rng = np.random.default_rng(0)
    for b in range(store.num_blocks):
        b0, b1 = store.block_bounds(b)
        for v in range(views):
            logits = torch.from_numpy(rng.standard_normal((b1 - b0, classes), dtype=np.float32) * 3)
            arrays = mode.encode(logits)
            arrays.update(crop=np.zeros((b1 - b0, 4), np.int16), flip=np.zeros(b1 - b0, bool))
            store.write_unit(b, v, arrays)
    return path


def _stream_epoch(path: str, epoch: int, memory_mb: int, batch_size: int, planned=None) -> StreamedTargets:
    """Serve one epoch's targets batch by batch, as train-student streams them; returns the spent source.
    ``planned()`` is called once the epoch is planned, before any target is read."""
    store = CacheStore.open(path)
    names = store.layout.target_names
    plan = plan_epoch(store.num_samples, store.block_size, epoch=epoch, seed=0, batch_size=batch_size,
                      window=store_window(store, memory_mb))
    source = StreamedTargets(store, [epoch_views(store.done_units(), epoch=epoch, seed=0)], names, plan)
    if planned is not None:
        planned()
    cpu = torch.empty(0)
    for b in plan.batches:
        idx = np.asarray(b, dtype=np.int64)
        source(ViewBatch(indices=idx, views=idx, seeds=idx, params=[], images=cpu), cpu)
    source.close()
    return source


def read_modes(path: str, memory_mb: int, batch_size: int) -> dict:
    """Views/s of one epoch's targets from local disk: whole (one read of every block) vs streamed (P5)."""
    store = CacheStore.open(path)
    n = store.num_samples

    def whole(r: int) -> float:
        t0 = time.perf_counter()
        CacheStore.open(path).read_views(epoch_views(store.done_units(), epoch=r, seed=0),
                                         names=store.layout.target_names)
        return n / (time.perf_counter() - t0)

    def stream(r: int) -> float:
        t0 = time.perf_counter()
        _stream_epoch(path, r, memory_mb, batch_size)
        return n / (time.perf_counter() - t0)

    return {"whole": whole, "stream": stream}


def _rss_child(path: str, memory_mb: int, batch_size: int, conn) -> None:
    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) << 10
    CacheStore.open(path)  # imports and zarr warmed up: the baseline
    before = status("VmRSS:")
    index: list[int] = []
    # the epoch's index (its order, batches, done mask) grows with N by design; the rest is targets
    source = _stream_epoch(path, 0, memory_mb, batch_size, planned=lambda: index.append(status("VmRSS:")))
    peak = status("VmHWM:")
    conn.send({"peak_over_baseline": peak - before, "baseline": before, "index": index[0] - before,
               "targets_peak": peak - index[0], "peak_blocks": source.peak_blocks})


def stream_rss(path: str, memory_mb: int, batch_size: int) -> dict:
    """P6: peak RSS over a fresh process's baseline while it streams one epoch's targets (Linux /proc)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_rss_child, args=(path, memory_mb, batch_size, child))
    p.start()
    out = parent.recv()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder:PATH (the JPEG folder) or hdf5:PATH")
    ap.add_argument("--limit", type=int, default=None, help="a stratified subset of the data")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--teacher-weights", default=None, help="default: a seeded random initialisation")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--view-preset", default=None, help="views of a kdcache preset (deit, deit-cifar, ...)")
    ap.add_argument("--views-per-image", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", nargs="+", default=["train", "dump", "read"],
                    choices=["train", "dump", "read", "data"])
    ap.add_argument("--ema-decay", type=float, default=None, help="model EMA in every training mode")
    ap.add_argument("--channels-last", action="store_true", help="channels-last in every training mode")
    ap.add_argument("--no-online", action="store_true")
    ap.add_argument("--feature", action="store_true",
                    help="dump the teacher's pooled embedding too and time cached training with feature KD "
                         "(cached-feature) beside plain cached training")
    ap.add_argument("--step-only", action="store_true",
                    help="also time the student's step on one in-memory batch (the ceiling of any data path)")
    ap.add_argument("--read-samples", type=int, nargs="+", default=[20000])
    ap.add_argument("--read-classes", type=int, default=1000)
    ap.add_argument("--read-block-size", type=int, default=1024)
    ap.add_argument("--read-batch-size", type=int, default=256)
    ap.add_argument("--target-memory-mb", type=int, default=TrainConfig.target_memory_mb,
                    help="train-student's budget for resident targets (the read part's streaming window)")
    ap.add_argument("--json", default="bench/results/throughput.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    data = DataConfig(source=args.data, limit=args.limit)
    ds = data.open().preload()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.teacher_weights is None:  # a seeded random teacher is fine for speed
            teacher_spec = TeacherSpec(name=args.teacher, random_init=True)
        else:
            teacher_spec = TeacherSpec(name=args.teacher, weights=args.teacher_weights)
        teacher = build_teacher(teacher_spec, num_classes=ds.num_classes)
        spec = resolve_view_spec(teacher.cfg, {"size": args.size, "preset": args.view_preset})
        if "train" in args.parts or "data" in args.parts:
            cache = os.path.join(tmp, "cache.zarr")
            dump_teacher(DumpConfig(data=data, out=cache, teacher=teacher_spec, views=args.views,
                                    view={"size": args.size}, batch_size=args.batch_size, workers=args.workers,
                                    block_size=args.block_size, device="cpu",
                                    targets="full+pooled:float16" if args.feature else "full"),
                         progress=False, log=lambda _m: None)
            store = CacheStore.open(cache)
            cache_spec = ViewSpec.from_dict(store.identity.view_spec)
        if "train" in args.parts:
            result["train"] = alternate(training_modes(ds, data, cache, cache_spec, teacher, args), args.rounds)
        if "data" in args.parts:
            result["data"] = alternate(data_modes(ds, data, cache, cache_spec, args), args.rounds)
        if "dump" in args.parts:
            result["dump"] = alternate(dump_modes(data, teacher_spec, ds, spec, teacher, args, tmp), args.rounds)
        if "read" in args.parts:
            result["read"], result["rss"] = {}, {}
            for n in args.read_samples:
                for targets in ("full", "topk:10"):
                    path = synthetic_cache(tmp, n, args.read_classes, 2, targets, args.read_block_size)
                    modes = read_modes(path, args.target_memory_mb, args.read_batch_size)
                    for k, v in alternate(modes, args.rounds).items():
                        result["read"][f"N={n} {targets} {k}"] = v
                    if targets == "full":
                        rss = stream_rss(path, args.target_memory_mb, args.read_batch_size)
                        print(f"N={n} {targets}: peak RSS {rss['peak_over_baseline'] / 2**20:.1f} MiB over the "
                              f"baseline, of which the epoch's index {rss['index'] / 2**20:.1f} MiB and targets "
                              f"{rss['targets_peak'] / 2**20:.1f} MiB; {rss['peak_blocks']} blocks resident at most",
                              flush=True)
                        result["rss"][f"N={n} {targets}"] = rss
                    shutil.rmtree(path)
    medians = {part: {k: statistics.median(v) for k, v in rs.items()} for part, rs in result.items()
               if part != "rss"}
    ratios = {}
    if "train" in medians:
        t = medians["train"]
        ratios.update({f"{k}/plain": t[k] / t["plain"] for k in t if k != "plain"})
        if "online" in t:
            ratios["cached/online"] = t["cached"] / t["online"]
        if "cached-feature" in t:
            ratios["cached-feature/cached"] = t["cached-feature"] / t["cached"]
    if "data" in medians:
        d = medians["data"]
        ratios.update({f"{k}/data-plain": d[k] / d["data-plain"] for k in d if k != "data-plain"})
    if "dump" in medians:
        ratios["dump/infer"] = medians["dump"]["dump"] / medians["dump"]["infer"]
    if "rss" in result and len(result["rss"]) >= 2:
        peaks = [r["targets_peak"] for r in result["rss"].values()]
        ratios["targets rss max/min"] = max(peaks) / max(1, min(peaks))
    print(f"\n{'part':<6} {'mode':<20} {'median /s':>12}")
    for part, ms in medians.items():
        for k, v in ms.items():
            print(f"{part:<6} {k:<20} {v:>12.1f}")
    for k, v in ratios.items():
        print(f"ratio  {k:<20} {v:>12.3f}")
    write_json(args.json, args, rounds={k: v for k, v in result.items() if k != "rss"}, rss=result.get("rss"),
               medians=medians, ratios=ratios)


if __name__ == "__main__":
    run(main)
