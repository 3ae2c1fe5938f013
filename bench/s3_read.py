"""Reading an epoch's targets from a cache on an S3 server against the same cache on local disk.

Writes one cache (synthetic float16 logits, kdcache's store, layout, codecs and checksums) twice: into a
local directory and into ``s3://BUCKET/c.zarr`` on a moto S3 server started on 127.0.0.1 for the run
(the tests' server, ``tests/helpers/s3_server.py``: a child process, nothing outside the machine). Then, in
alternating rounds (local, s3, local, s3, ...), opens the cache afresh and reads what ``train-student`` reads
for one epoch (``read_epoch``: the epoch's view of every block, every replay and target array, one chunk per
block and array) and reports the median seconds, MB/s of stored target bytes, the ratio, and the requests an
epoch takes from S3 by operation (counted from s3fs's debug log: HEAD, GET, LIST, ...).

Moto is a Python server on the same 2 cores, so the S3 figure is a floor on a real endpoint's overheads
(per-request latency of a local HTTP round trip, no network bandwidth limit), not a figure for AWS.

    python bench/s3_read.py --json bench/results/s3_read.json
"""

from __future__ import annotations

import argparse
import collections
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import run, write_json

from kdcache.augment import ViewSpec
from kdcache.augment._params import param_array_specs
from kdcache.cache import CacheIdentity, CacheStore, TargetMode, UnitLayout
from kdcache.train._schedule import read_epoch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from s3_server import start_s3_server  # noqa: E402


def write_cache(path: str, *, samples: int, views: int, classes: int, block: int, targets: str,
                storage_options: dict | None = None) -> CacheStore:
    mode = TargetMode.parse(targets)
    layout = UnitLayout.build(mode, classes, param_array_specs(ViewSpec()))
    g = torch.Generator().manual_seed(0)
    ident = CacheIdentity(teacher={"name": "synthetic"}, dataset={"kind": "synthetic", "split": "train",
                                                                  "manifest_sha256": "0"},
                          view_spec={}, seed=0, targets=str(mode))
    keys = [f"s/{i}" for i in range(samples)]
    store = CacheStore.create(path, identity=ident, keys=keys, labels=np.arange(samples) % classes,
                              num_classes=classes, num_views=views, layout=layout, attrs={}, block_size=block,
                              storage_options=storage_options)
    store = CacheStore.open(path, mode="r+", storage_options=storage_options)
    for b in range(store.num_blocks):
        b0, b1 = store.block_bounds(b)
        for v in range(views):
            arrays = layout.encode_targets(torch.randn(b1 - b0, classes, generator=g) * 3)
            for name, (shape, dtype) in layout.specs.items():
                if name not in arrays:
                    arrays[name] = np.zeros((b1 - b0, *shape), dtype=dtype)
            store.write_unit(b, v, arrays)
    return store


class _Calls(logging.Handler):
    """Counts s3fs's requests by S3 operation (its debug log says ``CALL: <operation> - ...`` for each)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("CALL: "):
            self.counts[msg[6:].split(" ", 1)[0]] += 1


def read_once(path: str, epoch: int, storage_options: dict | None) -> tuple[float, int, dict[str, int]]:
    """Open the cache afresh and read one epoch: seconds, decoded target bytes, and the S3 requests it took by
    operation (none for a local cache)."""
    log, calls = logging.getLogger("s3fs"), _Calls()
    level = log.level
    log.addHandler(calls)
    log.setLevel(logging.DEBUG)
    try:
        t = time.perf_counter()
        store = CacheStore.open(path, storage_options=storage_options)
        _, replay, teacher = read_epoch(store, epoch=epoch, seed=0)
        seconds = time.perf_counter() - t
    finally:
        log.removeHandler(calls)
        log.setLevel(level)
    return seconds, int(sum(a.nbytes for a in teacher.values())), dict(calls.counts)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16384)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--targets", default="full")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    server = start_s3_server()
    try:
        so = server.storage_options()
        bucket = server.new_bucket()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {"local": (str(Path(tmp) / "c.zarr"), None), "s3": (f"s3://{bucket}/c.zarr", so)}
            kw = dict(samples=args.samples, views=args.views, classes=args.classes, block=args.block_size,
                      targets=args.targets)
            for path, opts in paths.values():
                write_cache(path, storage_options=opts, **kw)
            times: dict[str, list[float]] = {m: [] for m in paths}
            requests: dict[str, list[dict[str, int]]] = {m: [] for m in paths}
            nbytes = 0
            for r in range(args.rounds):
                for mode, (path, opts) in paths.items():  # alternating: local, s3, local, s3, ...
                    s, nbytes, calls = read_once(path, r, opts)
                    times[mode].append(s)
                    requests[mode].append(calls)
    finally:
        server.stop()
    rows = []
    for mode, ts in times.items():
        med = statistics.median(ts)
        rows.append({"storage": mode, "median_s": med, "rounds_s": ts, "target_mb_per_s": nbytes / med / 1e6,
                     "requests_by_round": requests[mode],
                     "median_requests": statistics.median(sum(c.values()) for c in requests[mode])})
    ratio = rows[1]["median_s"] / rows[0]["median_s"]
    print(f"epoch of targets: {args.samples} samples x 1 view (of {args.views}), {args.classes} classes, "
          f"{args.targets}, blocks of {args.block_size}: {nbytes / 1e6:.1f} MB decoded")
    print(f"{'storage':8} {'median s':>9} {'MB/s':>8} {'requests':>9}  by operation (first round)")
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["requests_by_round"][0].items())) or "-"
        print(f"{r['storage']:8} {r['median_s']:9.3f} {r['target_mb_per_s']:8.1f} {r['median_requests']:9.0f}  {ops}")
    print(f"s3 / local time: {ratio:.2f}x")
    out = {"rows": rows, "s3_over_local": ratio, "target_bytes": nbytes}
    if args.json:
        write_json(args.json, args, **out)
    return out


if __name__ == "__main__":
    run(main)
