"""Embedding targets in real caches: bytes per view on disk for each target kind, and what the embedding costs a dump.

The teacher (default: the public CIFAR ResNet-56) is dumped with kdcache's own engine over V views of a
stratified subset of real images (default: 2,000 CIFAR-10 training images, 2 views), once per target kind:
``full``, ``full+pooled:float16``, ``full+pooled:int8``, ``none+pooled:int8`` and ``topk:1+pooled:int8``. The
table gives the bytes on disk per view (every file of the cache over N·V), the embedding arrays' share, and
the dump's rate. Dumps alternate round by round (a b c … a b c …) on this shared machine; the rate is the median
of the rounds, and the ratio to ``full`` is what storing the embedding costs the dump (the goal: nothing but the
encoding, since the embedding comes from the same forward pass).

    python bench/embedding_targets.py --images 2000 --views 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile

import torch
from _common import add_teacher_args, alternate, run, teacher_spec, write_json

from kdcache.cache import CacheStore
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, dump_teacher

KINDS = ("full", "full+pooled:float16", "full+pooled:int8", "none+pooled:int8", "topk:1+pooled:int8")


def dump_once(args, targets: str, out: str) -> float:
    """One dump of ``targets`` into a fresh ``out``; returns views per second."""
    shutil.rmtree(out, ignore_errors=True)
    s = dump_teacher(DumpConfig(data=DataConfig(source=args.data, limit=args.images), out=out,
                                teacher=teacher_spec(args), views=args.views, targets=targets,
                                batch_size=args.batch_size, workers=args.workers, device="cpu"),
                     progress=False, log=lambda _m: None)
    return s.images_per_second


def bytes_row(targets: str, out: str) -> dict:
    store = CacheStore.open(out)
    views = store.num_samples * store.num_views
    per_array = {}
    for name in store.view_array_names:
        folder = os.path.join(out, name)
        per_array[name] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs) / views
    emb = sum(v for k, v in per_array.items() if k.startswith("embedding"))
    return {"targets": targets, "views": views, "embedding_dim": store.layout.embedding_dim,
            "bytes_per_view": store.nbytes_on_disk() / views, "embedding_bytes_per_view": emb,
            "stored_bytes_per_view_before_compression": store.layout.target_bytes_per_view,
            "per_array": per_array}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_teacher_args(ap, student=False)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--json", default="bench/results/embedding_targets.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="kdcache-embedding-targets-")
    try:
        outs = {k: os.path.join(work, f"{i}.zarr") for i, k in enumerate(args.kinds)}
        rates = alternate({k: (lambda _r, k=k: dump_once(args, k, outs[k])) for k in args.kinds}, args.rounds,
                          "views/s")
        table = []
        base = statistics.median(rates[args.kinds[0]])
        for k in args.kinds:
            row = bytes_row(k, outs[k])
            row.update(views_per_second=rates[k], median_views_per_second=statistics.median(rates[k]),
                       rate_vs_first=statistics.median(rates[k]) / base)
            table.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'targets':<22} {'dim':>4} {'B/view':>8} {'embedding B/view':>17} {'views/s':>8} "
          f"{'vs ' + args.kinds[0]:>9}")
    for r in table:
        print(f"{r['targets']:<22} {r['embedding_dim'] or '-':>4} {r['bytes_per_view']:>8.1f} "
              f"{r['embedding_bytes_per_view']:>17.1f} {r['median_views_per_second']:>8.1f} {r['rate_vs_first']:>9.3f}")
    write_json(args.json, args, images=args.images, table=table)


if __name__ == "__main__":
    run(main)
