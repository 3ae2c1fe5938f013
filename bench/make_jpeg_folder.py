"""Write a deterministic, ImageNet-shaped ImageFolder of full-size JPEGs, offline.

Default: 20,000 training images in 100 classes (``--classes 1000`` works), plus ``--val-per-class`` held-out
images per class, under ``OUT/train/<class>/`` and ``OUT/val/<class>/``. Sizes vary around ImageNet's typical
500×375 (shorter side 300–500, aspect 3:4 to 16:9, both orientations); JPEG quality 90, 4:2:0.

Content comes from the shared CIFAR-10 images: class c draws its sources from CIFAR class ``c % 10`` (of the source's classes); each
image is one source upscaled (bicubic) to its size with a per-image crop, colour gain, gradient and grain, so
no two files are alike and decoding costs what a real photo of that size costs. ``--synthetic`` uses smooth
random colour fields instead (no shared data needed). Everything follows from ``--seed``: the same arguments
write byte-identical files.

    python bench/make_jpeg_folder.py --out bench/work/jpeg100 --images 20000 --classes 100
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.h5"


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) around ImageNet's 500×375."""
    short = int(rng.integers(300, 501))
    aspect = float(np.exp(rng.uniform(np.log(4 / 3) - 0.25, np.log(4 / 3) + 0.3)))
    long_ = int(round(short * aspect))
    return (long_, short) if rng.random() < 0.8 else (short, long_)


def _render(src: np.ndarray | None, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    if src is None:  # synthetic: a smooth random colour field
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    else:
        s = src.shape[0]
        c = int(rng.integers(min(24, s), s + 1))  # a crop of 75-100 % of a 32 px source
        y, x = (int(v) for v in rng.integers(0, s - c + 1, size=2))
        img = Image.fromarray(np.ascontiguousarray(src[y:y + c, x:x + c])).resize((w, h), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    ramp = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-20, 20)
    grain = rng.normal(0, 6, size=a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a * gain + ramp + grain, 0, 255).astype(np.uint8))


def _write(job: tuple[str, int, int, np.ndarray | None, int]) -> int:
    path, seed, index, src, quality = job
    rng = np.random.default_rng([seed, index])
    w, h = _size(rng)
    buf = io.BytesIO()
    _render(src, w, h, rng).save(buf, format="JPEG", quality=quality, subsampling=2)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def _sources(synthetic: bool, data: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if synthetic:
        return None
    if not data.exists():
        sys.exit(f"{data} not found: pass --data, or --synthetic")
    import h5py

    with h5py.File(data, "r") as f:
        return np.asarray(f["train/images"]), np.asarray(f["train/labels"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=20000, help="training images in all")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=5)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true", help="no CIFAR content: smooth random colour fields")
    ap.add_argument("--data", type=Path, default=SHARED_CIFAR, help="CIFAR-10 HDF5 (train split) for content")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.images < args.classes or args.classes < 1:
        sys.exit("--images must be >= --classes >= 1")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not empty; choose another --out")
    src = _sources(args.synthetic, args.data)
    rng = np.random.default_rng([args.seed, 0x6A7067])
    per_cifar = None if src is None else [np.flatnonzero(src[1] == k) for k in np.unique(src[1])]
    jobs = []
    for split, per_class in (("train", None), ("val", args.val_per_class)):
        counts = ([args.images // args.classes + (c < args.images % args.classes) for c in range(args.classes)]
                  if per_class is None else [per_class] * args.classes)
        for c, n in enumerate(counts):
            d = out / split / f"c{c:04d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = None
                if per_cifar is not None:
                    pool = per_cifar[c % len(per_cifar)]
                    image = src[0][pool[int(rng.integers(len(pool)))]]
                jobs.append((str(d / f"{split}_{c:04d}_{i:05d}.JPEG"), args.seed, len(jobs), image, args.quality))
    t0 = time.perf_counter()
    total = 0
    with Pool(args.processes) as pool:
        for k, nbytes in enumerate(pool.imap(_write, jobs, chunksize=64), 1):
            total += nbytes
            if k % 2000 == 0 or k == len(jobs):
                print(f"{k}/{len(jobs)} images, {total / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s",
                      flush=True)
    print(f"wrote {len(jobs)} JPEGs ({total / len(jobs) / 1024:.0f} KiB each on average) to {out}")


if __name__ == "__main__":
    main()
