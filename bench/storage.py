"""Bytes per view on disk for a 1000-class teacher, and what each encoding costs the student (goal P4).

Writes caches through kdcache's own store (the layout, codecs and checksums ``dump-teacher`` uses) for
``full`` and ``topk:K`` (K = 1, 5, 10, 20, 100 by default), and reports for each:

* bytes per view on disk — every file of the cache (per-view arrays, ``done``, keys, labels, metadata)
  divided by N·V, and per array;
* the KL divergence KL(p ‖ q) between the teacher's full softmax p and the distribution q the student
  rebuilds from the stored targets (``teacher_log_probs``, ``spread`` fill), at T = 1 and T = 4.

Top-k rows come in both encodings: format 2 (quantised, what kdcache writes) and format 1 (float16 values,
what kdcache 0.1 wrote), so the quantisation's cost is measured, not assumed. A ``codecs`` table gives the
bytes per view of each top-10 array under the candidate Blosc codecs: the measurement behind the store's choice.

Logits: no 1000-class teacher weights exist offline, so they are synthetic and shaped like an ImageNet
teacher's (``realistic_logits``): classes sit in contiguous groups of related classes (as in ImageNet's
WordNet order), each image has a class, a confidence and its group's classes as runners-up, and each view
rescales and perturbs them. The table states the mean top-1 probability and entropy this gives.
``--shuffle-classes`` permutes class ids (no index locality): the pessimistic case for index compression.
View parameters are real: kdcache's RandomResizedCrop + flip drawn for image sizes distributed as in
``bench/make_jpeg_folder.py`` (around ImageNet's 500×375), stored as a folder source stores them.

    python bench/storage.py --json bench/results/storage.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import run, write_json
from make_jpeg_folder import _size
from numcodecs import Blosc

from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.augment._params import param_array_specs
from kdcache.augment._seeding import derive_view_seed
from kdcache.cache import CacheIdentity, CacheStore, TargetMode, UnitLayout
from kdcache.cache._targets import decode_targets, smallest_int_dtype
from kdcache.train._losses import teacher_log_probs

TEMPERATURES = (1.0, 4.0)


def realistic_logits(n: int, views: int, classes: int, seed: int, *, signal: float, group: float,
                     noise: float, view_noise: float, shuffle_classes: bool = False) -> torch.Tensor:
    """(n, views, classes) float32 logits shaped like an ImageNet teacher's on augmented views."""
    g = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < classes:
        sizes.append(int(g.integers(5, 60)))
    groups = np.repeat(np.arange(len(sizes)), sizes)[:classes]
    y = g.integers(0, classes, n)
    conf = g.uniform(0.3, 1.3, (n, 1)).astype(np.float32)  # how recognisable the image is
    base = g.normal(0, noise, (n, classes)).astype(np.float32)
    base += group * (groups[None, :] == groups[y][:, None]) * conf  # its group's classes as runners-up
    base[np.arange(n), y] += signal * conf[:, 0]
    out = base[:, None, :] + g.normal(0, view_noise, (n, views, classes)).astype(np.float32)
    out *= g.uniform(0.6, 1.1, (n, views, 1)).astype(np.float32)  # a view's crop keeps more or less of it
    if shuffle_classes:
        out = out[..., g.permutation(classes)]
    return torch.from_numpy(out)


def _v1_layout(mode: TargetMode, classes: int, params: dict) -> UnitLayout:
    """kdcache 0.1's top-k arrays (float16 values, raw tail, separate argmax)."""
    idx = smallest_int_dtype(classes - 1)
    return UnitLayout(mode, {**{k: (tuple(s), np.dtype(d)) for k, (s, d) in params.items()},
                             "topk_values": ((mode.k,), np.dtype(np.float16)), "topk_indices": ((mode.k,), idx),
                             "topk_tail_lse": ((), np.dtype(np.float16)),
                             "argmax": ((), smallest_int_dtype(classes - 1, signed=True))})


def _file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_cache(path: str, layout: UnitLayout, logits: torch.Tensor, params: dict[str, np.ndarray],
                keys: list[str], block: int) -> CacheStore:
    n, views, classes = logits.shape
    ident = CacheIdentity(teacher={"name": "synthetic-imagenet"}, dataset={"kind": "synthetic", "split": "train",
                                                                           "manifest_sha256": "0"},
                          view_spec={}, seed=0, targets=str(layout.mode))
    store = CacheStore.create(path, identity=ident, keys=keys, labels=logits[:, 0].argmax(1).numpy(),
                              num_classes=classes, num_views=views, layout=layout, attrs={}, block_size=block)
    for b in range(store.num_blocks):
        b0, b1 = store.block_bounds(b)
        for v in range(views):
            arrays = layout.encode_targets(logits[b0:b1, v])
            arrays.update({k: a[b0:b1, v] for k, a in params.items()})
            store.write_unit(b, v, arrays)
    return store


def rebuilt_log_probs(store: CacheStore, view: int, temperature: float) -> torch.Tensor:
    """log q: the distribution the student rebuilds from the stored targets of ``view`` (every sample)."""
    stored = store.read_views([view] * store.num_blocks, names=store.layout.target_names)
    decoded = decode_targets({k: torch.from_numpy(a) for k, a in stored.items()})
    return teacher_log_probs(decoded, store.num_classes, temperature)


def mean_kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    return float((p_log.exp() * (p_log - q_log)).sum(1).mean())


def kl_table(logits: torch.Tensor, stores: list[CacheStore]) -> list[dict[str, float]]:
    """Per store: mean KL(teacher ‖ rebuilt) over every view at each temperature; with two stores (format 2
    and format 1 of one top-k) the second dict of the first also has KL(format 1 ‖ format 2): the cost of
    the quantisation alone."""
    views = logits.shape[1]
    out: list[dict[str, float]] = [{} for _ in stores]
    for v in range(views):
        for t in TEMPERATURES:
            p_log = torch.log_softmax(logits[:, v] / t, dim=1)
            qs = [rebuilt_log_probs(s, v, t) for s in stores]
            for i, q in enumerate(qs):
                out[i][f"T={t:g}"] = out[i].get(f"T={t:g}", 0.0) + mean_kl(p_log, q) / views
            if len(qs) == 2:
                key = f"vs format 1, T={t:g}"
                out[0][key] = out[0].get(key, 0.0) + mean_kl(qs[1], qs[0]) / views
    return out


def codec_table(store: CacheStore, names: list[str]) -> dict[str, dict[str, float]]:
    """Bytes per view of each array under candidate Blosc codecs (the store's chunks, compressed alone)."""
    candidates = {f"{c}-{lvl}-{sh}": Blosc(c, lvl, {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                                                   "bitshuffle": Blosc.BITSHUFFLE}[sh])
                  for c in ("zstd", "lz4") for lvl in (5, 9) for sh in ("noshuffle", "shuffle", "bitshuffle")}
    table: dict[str, dict[str, float]] = {}
    views = store.num_views
    for name in names:
        row = {}
        for label, codec in candidates.items():
            total = 0
            for v in range(views):
                for b in range(store.num_blocks):
                    total += len(codec.encode(np.ascontiguousarray(store.read_unit(b, v, [name])[name])))
            row[label] = total / (store.num_samples * views)
        table[name] = row
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20, 100])
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", type=float, default=10.0, help="logit margin of the image's class (x confidence)")
    ap.add_argument("--group", type=float, default=11.0, help="margin of its group's classes (x confidence)")
    ap.add_argument("--noise", type=float, default=0.6, help="per-image logit noise (std)")
    ap.add_argument("--view-noise", type=float, default=0.6, help="per-view logit noise (std)")
    ap.add_argument("--shuffle-classes", action="store_true", help="no class-index locality (pessimistic)")
    ap.add_argument("--no-full", action="store_true", help="skip the full-logit row")
    ap.add_argument("--no-v1", action="store_true", help="skip the format-1 (float16 top-k) rows")
    ap.add_argument("--json", default="bench/results/storage.json")
    args = ap.parse_args()

    n, views, classes = args.samples, args.views, args.classes
    logits = realistic_logits(n, views, classes, args.seed, signal=args.signal, group=args.group, noise=args.noise,
                              view_noise=args.view_noise, shuffle_classes=args.shuffle_classes)
    p = torch.softmax(logits.reshape(-1, classes), dim=1)
    shape = {"mean_top1_prob": float(p.max(1).values.mean()),
             "mean_entropy_nats": float(-(p * p.clamp_min(1e-30).log()).sum(1).mean()),
             "mean_top5_mass": float(p.topk(min(5, classes), 1).values.sum(1).mean())}
    del p
    # real view parameters: kdcache's crops for ImageNet-like image sizes (a folder source: int32 boxes)
    spec = ViewSpec(size=args.size, scale=(0.08, 1.0))
    pipeline = ViewPipeline(spec)
    rng = np.random.default_rng(args.seed)
    sizes = [_size(rng) for _ in range(n)]
    keys = [f"train/n{(i % classes):08d}/img_{i:08d}.JPEG" for i in range(n)]
    per_view = [[pipeline.make_params(derive_view_seed(args.seed, keys[i], v), (sizes[i][1], sizes[i][0]))
                 for v in range(views)] for i in range(n)]
    flat = pipeline.params_to_arrays([per_view[i][v] for i in range(n) for v in range(views)])
    params = {k: a.reshape(n, views, *a.shape[1:]) for k, a in flat.items()}
    pspecs = param_array_specs(spec)

    rows = []
    modes = ([] if args.no_full else ["full"]) + [f"topk:{k}" for k in args.ks]
    with tempfile.TemporaryDirectory() as tmp:
        for m in modes:
            mode = TargetMode.parse(m)
            encodings = [("format 2", UnitLayout.build(mode, classes, pspecs))]
            if mode.kind == "topk" and not args.no_v1:
                encodings.append(("format 1", _v1_layout(mode, classes, pspecs)))
            stores, these = [], []
            for enc, layout in encodings:
                path = os.path.join(tmp, f"{m.replace(':', '')}_{enc[-1]}.zarr")
                stores.append(write_cache(path, layout, logits, params, keys, args.block_size))
                arrays = {name: _file_bytes(Path(path) / name) / (n * views)
                          for name in [*layout.names, "done", "sample_key", "label"]}
                these.append({"targets": m, "encoding": enc if mode.kind == "topk" else "float16",
                              "bytes_per_view": _file_bytes(Path(path)) / (n * views), "per_array": arrays})
                if m == "topk:10" and enc == "format 2":
                    these[-1]["codecs"] = codec_table(stores[-1], [x for x in layout.names if x != "flip"])
            for row, kl in zip(these, kl_table(logits, stores)):
                row["kl"] = kl
                rows.append(row)
                print(f"{m:<9} {row['encoding']:<9} {row['bytes_per_view']:8.2f} B/view   "
                      + "  ".join(f"KL {k} {v:.2e}" for k, v in row["kl"].items()), flush=True)

    print(f"\nlogits: mean top-1 prob {shape['mean_top1_prob']:.3f}, mean entropy {shape['mean_entropy_nats']:.3f} "
          f"nats, mean top-5 mass {shape['mean_top5_mass']:.3f}; N = {n}, V = {views}, C = {classes}")
    print(f"{'targets':<9} {'encoding':<9} {'B/view':>8} {'targets':>8} {'params':>7} {'other':>6} "
          + " ".join(f"{'KL ' + t:>9}" for t in ("T=1", "T=4")) + "   KL(format 1 ‖ format 2) T=1, T=4")
    for r in rows:
        layout_targets = set(TargetMode.parse(r["targets"]).target_names)
        tb = sum(v for k, v in r["per_array"].items() if k in layout_targets)
        pb = sum(v for k, v in r["per_array"].items() if k in pspecs)
        other = r["bytes_per_view"] - tb - pb
        print(f"{r['targets']:<9} {r['encoding']:<9} {r['bytes_per_view']:8.2f} {tb:8.2f} {pb:7.2f} {other:6.2f} "
              + " ".join(f"{r['kl'][t]:9.2e}" for t in ("T=1", "T=4"))
              + ("   " + ", ".join(f"{r['kl'][f'vs format 1, {t}']:.2e}" for t in ("T=1", "T=4"))
                 if "vs format 1, T=1" in r["kl"] else ""))
    codecs = next((r["codecs"] for r in rows if "codecs" in r), None)
    if codecs:
        print("\ntop-10 arrays under candidate codecs (B/view):")
        labels = list(next(iter(codecs.values())))
        print(f"{'array':<14} " + " ".join(f"{lab:>20}" for lab in labels))
        for name, row in codecs.items():
            print(f"{name:<14} " + " ".join(f"{row[lab]:20.2f}" for lab in labels))
    write_json(args.json, args, logit_shape=shape, rows=rows)


if __name__ == "__main__":
    run(main)
