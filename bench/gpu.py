"""One prepared GPU run: the CUDA tests, then 224-px throughput of cached vs plain vs online training, the data
path alone, and the dump against pure teacher inference. Writes one JSON and prints a table.

Sized for under 8 minutes on one modern GPU with 16 CPU cores (the defaults); nothing is downloaded: the
images are a synthetic JPEG folder (``bench/make_jpeg_folder.py --synthetic``) and the teachers are seeded
random initialisations (speed does not depend on the weights).

For each pair (ResNet-50 -> ResNet-18, DeiT-S -> DeiT-Ti; torchvision's and kdcache's timm-free presets):

* ``dump`` / ``infer`` — views/s of ``dump-teacher`` (``--views`` views per image) against the teacher's pure
  inference on the same views through the same loader (same batch, workers, autocast);
* ``cached`` / ``plain`` / ``online`` — training images/s of the student (bf16, channels-last, EMA on, AdamW):
  ``train-student`` from the cache, the same loop from labels on fresh views (``train-teacher`` with the
  student), and ``train-student --online-teacher`` (the teacher's forward at every step). Each run trains one short
  epoch of ``--steps`` steps; its steady rate counts (``train/steady_images_per_second``: from the first
  logging interval, a quarter of the steps, on, so worker start-up and cuDNN autotuning are left out);
* ``data-m1`` / ``data-m4`` / ``data-torchvision`` — the data path alone (decode, replay, targets, collate,
  to the device; no student): kdcache's cached epoch with 1 and 4 views per decoded image against a plain
  torchvision ``ImageFolder`` + ``RandomResizedCrop`` loader. Images/s over ``--steps`` batches after a
  quarter as many untimed ones (worker start-up).

Modes are measured in alternating rounds (a b c a b c ...); figures are medians over rounds, ratios are
between medians.

    python bench/gpu.py                                   # CUDA: tests + both pairs, bench/results/gpu.json
    python bench/gpu.py --toy --device cpu --json /tmp/gpu_toy.json --tests tests/test_cuda.py   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import alternate, run, write_json
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from kdcache._orphans import exit_with_parent
from kdcache._runtime import DistContext, autocast
from kdcache._views import BlockBatches, ViewDraws, identity_collate
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, build_teacher, dump_teacher
from kdcache.train import LossConfig, TrainConfig, train_student, train_teacher
from kdcache.train._epochs import cached_epochs

REPO = Path(__file__).resolve().parents[1]
PAIRS = {"resnet": ("resnet50", "resnet18"), "deit": ("deit_small_patch16_224", "deit_tiny_patch16_224")}
TOY_PAIRS = {"resnet": ("cnn_tiny", "cnn_tiny"), "deit": ("deit_test", "deit_test")}


def run_tests(target: str, timeout: int) -> dict:
    """``pytest -m cuda`` in a child process: counts of passed / failed / skipped and the summary line."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rfEs", target]
    try:
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        out, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), 124
    lines = [ln for ln in out.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|error)", ln)), "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
    print(f"cuda tests: {summary.strip('= ') or 'no summary'} (rc {rc}, {time.perf_counter() - t0:.0f} s)", flush=True)
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return {"rc": rc, "summary": summary.strip("= "), "counts": counts, "failures": failures[:20],
            "seconds": time.perf_counter() - t0}


def make_images(root: str, args) -> str:
    if not os.path.isdir(os.path.join(root, "train")):
        subprocess.run([sys.executable, str(REPO / "bench" / "make_jpeg_folder.py"), "--out", root, "--synthetic",
                        "--images", str(args.images), "--classes", str(args.classes), "--val-per-class", "1",
                        "--processes", str(max(1, args.workers))], check=True, stdout=subprocess.DEVNULL)
    return f"folder:{root}"


def _silent(_m: str) -> None:
    pass


def dump_modes(data: DataConfig, teacher: TeacherSpec, ds, args, tmp: str, device: torch.device) -> dict:
    loaded = build_teacher(teacher, num_classes=ds.num_classes)
    model = loaded.model.to(device).eval()
    from kdcache._views import resolve_view_spec

    spec = resolve_view_spec(loaded.cfg, {"size": args.size})
    pipeline = ViewPipeline(spec)
    n_blocks = -(-len(ds) // args.block_size)
    work = [(b, list(range(args.views))) for b in range(n_blocks)]
    amp = device.type == "cuda"

    def bounds(b: int):
        return b * args.block_size, min((b + 1) * args.block_size, len(ds))

    def infer(r: int) -> float:
        loader = DataLoader(ViewDraws(ds, pipeline, r), batch_sampler=BlockBatches(work, bounds, args.batch_size),
                            num_workers=args.workers, collate_fn=identity_collate, pin_memory=amp,
                            worker_init_fn=exit_with_parent())
        t0, n = time.perf_counter(), 0
        with torch.inference_mode(), autocast(device, amp):
            for batch in loader:
                model(batch.images.to(device, non_blocking=True)).float().cpu()  # the dump reads logits back too
                n += len(batch.indices)
        return n / (time.perf_counter() - t0)

    def dump(r: int) -> float:
        out = os.path.join(tmp, "cache.zarr")
        cfg = DumpConfig(data=data, out=out + f".{r}", teacher=teacher, views=args.views, seed=r,
                         view={"size": args.size}, batch_size=args.batch_size, workers=args.workers,
                         block_size=args.block_size, device=str(device), amp=amp)
        t0 = time.perf_counter()
        s = dump_teacher(cfg, progress=False, log=_silent)
        rate = s.views_computed / (time.perf_counter() - t0)
        if os.path.exists(out):
            import shutil
            shutil.rmtree(out)
        os.replace(out + f".{r}", out)  # the last round's cache trains the students
        return rate

    return {"infer": infer, "dump": dump}


def _epoch_rate(out: str) -> float:
    rows = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    return float(rows[-1]["train/steady_images_per_second"])


def train_modes(data: DataConfig, cache: str, teacher: TeacherSpec, student: str, args, tmp: str,
                device: torch.device) -> dict:
    cuda = device.type == "cuda"
    common = dict(data=data, model=student, epochs=1, batch_size=args.batch_size, workers=args.workers,
                  device=str(device), val_split=None, max_steps_per_epoch=args.steps, overwrite=True,
                  log_interval=max(1, args.steps // 4),
                  precision="bf16" if cuda else "fp32", channels_last=cuda, ema_decay=0.9998, warmup_epochs=0.0)

    def cached(r: int) -> float:
        cfg = TrainConfig(out=os.path.join(tmp, "run-cached"), cache=cache, loss=LossConfig(distill="soft"),
                          seed=r, **common)
        return _epoch_rate(train_student(cfg, progress=False, log=_silent)["out"])

    def plain(r: int) -> float:
        cfg = TrainConfig(out=os.path.join(tmp, "run-plain"), view={"size": args.size}, seed=r, **common)
        return _epoch_rate(train_teacher(cfg, progress=False, log=_silent)["out"])

    def online(r: int) -> float:
        cfg = TrainConfig(out=os.path.join(tmp, "run-online"), cache=cache, teacher=teacher, seed=r,
                          loss=LossConfig(distill="soft"), **common)
        return _epoch_rate(train_student(cfg, progress=False, log=_silent)["out"])

    return {"cached": cached, "plain": plain, "online": online}


def data_modes(data: DataConfig, ds, cache: str, args, device: torch.device) -> dict:
    store = CacheStore.open(cache)
    spec = ViewSpec.from_dict(store.identity.view_spec)
    pipeline = ViewPipeline(spec)
    ctx = DistContext()
    pin = device.type == "cuda"

    def kdcache_path(r: int, m: int) -> float:
        cfg = TrainConfig(data=data, out="-", model="cnn_tiny", cache=cache, epochs=m, batch_size=args.batch_size,
                          workers=args.workers, device=str(device), seed=r, views_per_image=m)
        loader, targets = cached_epochs(store, ds, pipeline, cfg, ctx, pin)(0)
        warm = max(1, args.steps // 4) * m  # timed from here: without worker start-up
        t0, n = time.perf_counter(), 0
        try:
            for step, batch in enumerate(loader):
                if step >= (args.steps + warm // m) * m:
                    break
                if step == warm:
                    t0, n = time.perf_counter(), 0
                x = batch.images.to(device, non_blocking=True)
                t = targets(batch, x)
                n += x.shape[0]
            if device.type == "cuda":
                t["logits"].sum().item()  # wait for the last copies
        finally:
            targets.close()
        return n / (time.perf_counter() - t0)

    root = data.source.split(":", 1)[1]
    tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio,
                                                            antialias=True),
                     v2.RandomHorizontalFlip(spec.flip_prob), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(spec.mean, spec.std)])
    folder = datasets.ImageFolder(os.path.join(root, "train"), transform=tf)

    def torchvision_path(r: int) -> float:
        g = torch.Generator().manual_seed(r)
        loader = DataLoader(folder, batch_size=args.batch_size, shuffle=True, generator=g, num_workers=args.workers,
                            pin_memory=pin, drop_last=True, worker_init_fn=exit_with_parent())
        warm = max(1, args.steps // 4)
        t0, n = time.perf_counter(), 0
        x = None
        for step, (x, y) in enumerate(loader):
            if step >= args.steps + warm:
                break
            if step == warm:
                t0, n = time.perf_counter(), 0
            x = x.to(device, non_blocking=True)
            y.to(device, non_blocking=True)
            n += x.shape[0]
        if x is not None and device.type == "cuda":
            x.sum().item()
        return n / (time.perf_counter() - t0)

    return {"data-m1": lambda r: kdcache_path(r, 1), f"data-m{args.views_per_image}":
            lambda r: kdcache_path(r, args.views_per_image), "data-torchvision": torchvision_path}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--toy", action="store_true", help="tiny models, 32 px, a few images: the CPU smoke test")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--images", type=int, default=None, help="training images [3072; toy 48]")
    ap.add_argument("--classes", type=int, default=None, help="[100; toy 4]")
    ap.add_argument("--size", type=int, default=None, help="view size [224; toy 32]")
    ap.add_argument("--views", type=int, default=4, help="views per image in the cache")
    ap.add_argument("--views-per-image", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=None, help="[128; toy 8]")
    ap.add_argument("--block-size", type=int, default=None, help="[512; toy 16]")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=None, help="steps timed per mode and round [40; toy 4]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tests", default="tests", help="what `pytest -m cuda` collects ('none' to skip)")
    ap.add_argument("--tests-timeout", type=int, default=240)
    ap.add_argument("--work", default=None, help="where the JPEG folder is written (kept between runs)")
    ap.add_argument("--json", default="bench/results/gpu.json")
    args = ap.parse_args()
    toy = dict(images=48, classes=4, size=32, batch_size=8, block_size=16, steps=4)
    full = dict(images=3072, classes=100, size=224, batch_size=128, block_size=512, steps=40)
    for k, v in (toy if args.toy else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available; use --toy --device cpu for the smoke test")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if args.tests != "none":
        result["tests"] = run_tests(args.tests, args.tests_timeout)
    pairs = TOY_PAIRS if args.toy else PAIRS
    with tempfile.TemporaryDirectory() as tmp:
        data = DataConfig(source=make_images(args.work or os.path.join(tmp, "jpeg"), args))
        ds = data.open().preload()
        for key in args.pairs:
            t_name, s_name = pairs[key]
            teacher = TeacherSpec(name=t_name, random_init=True)
            label = f"{t_name}->{s_name}"
            part: dict = {}
            part["dump"] = alternate(dump_modes(data, teacher, ds, args, tmp, device), args.rounds, key)
            cache = os.path.join(tmp, "cache.zarr")
            part["train"] = alternate(train_modes(data, cache, teacher, s_name, args, tmp, device), args.rounds, key)
            part["data"] = alternate(data_modes(data, ds, cache, args, device), args.rounds, key)
            result[label] = part
    result["seconds"] = time.perf_counter() - t_start
    medians = {label: {k: statistics.median(v) for rs in part.values() for k, v in rs.items()}
               for label, part in result.items() if isinstance(part, dict) and "train" in part}
    ratios = {}
    m = args.views_per_image
    for label, med in medians.items():
        ratios[label] = {"cached/plain": med["cached"] / med["plain"], "cached/online": med["cached"] / med["online"],
                         "dump/infer": med["dump"] / med["infer"],
                         "data-m1/torchvision": med["data-m1"] / med["data-torchvision"],
                         f"data-m{m}/torchvision": med[f"data-m{m}"] / med["data-torchvision"]}
    print(f"\n{'pair':<40} {'mode':<18} {'median /s':>11}")
    for label, med in medians.items():
        for k, v in med.items():
            print(f"{label:<40} {k:<18} {v:>11.1f}")
        for k, v in ratios[label].items():
            print(f"{label:<40} {k:<18} {v:>11.3f}")
    if "tests" in result:
        print(f"cuda tests: {result['tests']['summary']}")
    print(f"total {result['seconds']:.0f} s on {result['device']}")
    write_json(args.json, args, result=result, medians=medians, ratios=ratios,
               commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                     text=True).stdout.strip() or None)


if __name__ == "__main__":
    np.seterr(all="ignore")
    run(main)
