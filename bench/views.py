"""The view pipeline alone (no model): kdcache's replay and draw against timm's ``create_transform``.

Three modes build the same recipe per image, in one process, from decoded source data:

* ``timm``: what a user would otherwise write, ``timm.data.create_transform(S, is_training=True,
  auto_augment=..., re_prob=..., re_mode=..., interpolation=..., scale=...)`` on a PIL image (PIL kernels);
* ``replay``: kdcache rebuilding each view from recorded parameters (``ViewPipeline.apply``: what
  ``train-student`` does per sample);
* ``draw``: kdcache drawing the parameters and building the view (``make_params`` + ``apply``: the dump).

timm's Posterize with 0 bits is patched to give a black image (Pillow >= 10 refuses 0 bits, which timm's
``inc1`` posterize reaches at magnitude 10). Decoding is included in every mode (PIL for timm, kdcache's source for kdcache), MixUp/CutMix is not (timm
mixes batches). Modes alternate round by round (a b c a b c ...); the table gives the median images/s and
the ratio to timm.

    python bench/views.py --data hdf5:../shared/data/cifar10.h5 --size 32 --images 2000 --rounds 5
    python bench/views.py --data folder:bench/work/jpeg100 --size 224 --images 300 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import SHARED, run, write_json
from PIL import Image

from kdcache.augment import ViewPipeline, ViewSpec, derive_view_seed
from kdcache.data import open_dataset

MODES = ("timm", "replay", "draw")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"hdf5:{SHARED / 'data' / 'cifar10.h5'}")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--auto-augment", default="rand-m9-mstd0.5-inc1")
    ap.add_argument("--reprob", type=float, default=0.25)
    ap.add_argument("--remode", default="pixel")
    ap.add_argument("--json", default="bench/results/views_cifar.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one worker core, as a DataLoader worker has

    import timm.data
    from PIL import ImageOps

    # timm's PosterizeIncreasing keeps 0 bits at magnitude 10 (reached under mstd0.5), which Pillow >= 10
    # refuses ("bits must be between or equal to 1 and 8"): 0 bits is a black image, as torchvision gives
    posterize = ImageOps.posterize
    ImageOps.posterize = lambda img, bits: Image.new(img.mode, img.size) if bits == 0 else posterize(img, bits)

    ds = open_dataset(args.data, limit=args.images).preload()  # decoded once: the modes compare the views
    n = len(ds)
    spec = ViewSpec(size=args.size, scale=(0.08, 1.0), interpolation="bicubic", auto_augment=args.auto_augment,
                    reprob=args.reprob, remode=args.remode)
    pipeline = ViewPipeline(spec)
    params = [pipeline.make_params(derive_view_seed(0, k, 0), ds.image_size(i)) for i, k in enumerate(ds.keys)]
    tf = timm.data.create_transform(args.size, is_training=True, auto_augment=args.auto_augment,
                                    re_prob=args.reprob, re_mode=args.remode, interpolation="bicubic",
                                    scale=(0.08, 1.0), mean=spec.mean, std=spec.std)

    def pil(i: int) -> Image.Image:
        if hasattr(ds, "_file"):  # a folder: decode the file as timm's ImageFolder would
            with Image.open(ds._file(int(ds._src_index[i]))) as im:
                return im.convert("RGB")
        return Image.fromarray(ds.get_image(i).permute(1, 2, 0).numpy())

    def rate(mode: str) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            if mode == "timm":
                tf(pil(i))
            elif mode == "replay":
                pipeline.apply(ds.get_image(i), params[i])
            else:
                img = ds.get_image(i)
                pipeline.apply(img, pipeline.make_params(derive_view_seed(0, ds.keys[i], 1), tuple(img.shape[-2:])))
        return n / (time.perf_counter() - t0)

    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for m in MODES:
            rates[m].append(rate(m))
        print(f"round {r + 1}: " + ", ".join(f"{m} {rates[m][-1]:.0f}/s" for m in MODES), flush=True)
    med = {m: statistics.median(v) for m, v in rates.items()}
    table = [{"mode": m, "median_images_per_s": med[m], "ratio_to_timm": med[m] / med["timm"],
              "rounds": rates[m]} for m in MODES]
    print(f"{'mode':8} {'images/s':>10} {'x timm':>8}")
    for t in table:
        print(f"{t['mode']:8} {t['median_images_per_s']:10.0f} {t['ratio_to_timm']:8.3f}")
    write_json(args.json, args, spec=spec.to_dict(), images=n, table=table,
               first_image_hw=[int(v) for v in ds.image_size(0)])


if __name__ == "__main__":
    run(main)
