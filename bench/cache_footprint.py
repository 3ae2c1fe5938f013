"""Bytes per view on disk: full logits vs top-k, with a real teacher on real data.

Dumps the same CIFAR-10 subset with the public CIFAR ResNet-56 (../shared) three times —
``full``, ``topk:10`` and ``topk:5`` — in one run, and reports the footprint per cached view
(total and per array) and the dump throughput of each. Prints a table, writes JSON.

    python bench/cache_footprint.py --limit 5000 --views 4 --json bench/results/cache_footprint.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import add_teacher_args, run, teacher_spec, write_json

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, dump_teacher


def array_bytes(path: str, name: str) -> int:
    root = Path(path) / name
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_teacher_args(ap, student=False)
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--modes", default="full,topk:10,topk:5")
    ap.add_argument("--json", default="bench/results/cache_footprint.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            out = os.path.join(tmp, mode.replace(":", "") + ".zarr")
            cfg = DumpConfig(data=DataConfig(source=args.data, limit=args.limit), out=out,
                             teacher=teacher_spec(args), views=args.views,
                             targets=mode, workers=args.workers, batch_size=256)
            t0 = time.perf_counter()
            s = dump_teacher(cfg, progress=False, log=lambda _m: None)
            wall = time.perf_counter() - t0
            store = CacheStore.open(out)
            n_views = s.num_samples * s.num_views
            per_array = {n: array_bytes(out, n) / n_views for n in [*store.view_array_names, "done"]}
            rows.append({"targets": mode, "views": n_views, "bytes_total": s.bytes_on_disk,
                         "bytes_per_view": s.bytes_on_disk / n_views, "per_array_bytes_per_view": per_array,
                         "views_per_second": s.images_per_second, "wall_seconds": wall,
                         "label_agreement": s.label_agreement})
    print(f"{'targets':<9} {'views':>7} {'bytes/view':>11} {'targets B/view':>15} {'params B/view':>14} "
          f"{'views/s':>8} {'agree':>7}")
    for r in rows:
        pa = r["per_array_bytes_per_view"]
        tgt = sum(v for k, v in pa.items() if k in ("logits", "topk_values", "topk_indices", "topk_tail_lse", "argmax"))
        par = sum(v for k, v in pa.items() if k in ("crop", "flip", "view_seed", "done"))
        print(f"{r['targets']:<9} {r['views']:>7} {r['bytes_per_view']:>11.1f} {tgt:>15.1f} {par:>14.1f} "
              f"{r['views_per_second']:>8.0f} {100 * r['label_agreement']:>6.2f}%")
    write_json(args.json, args, rows=rows)


if __name__ == "__main__":
    run(main)
