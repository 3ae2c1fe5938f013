"""Reading the same JPEGs from a ``folder:`` tree and from ``wds:`` tar shards, in random order.

Packs the ``train`` split of an ImageFolder (``bench/make_jpeg_folder.py``'s layout; made here with
``--make N`` when no ``--folder`` is given) into webdataset shards with webdataset's ``TarWriter``
(``__key__`` = class/file stem, the JPEG bytes unchanged, ``cls`` = the label), then in alternating rounds
(folder, wds, folder, wds, ...) reads every image once in a seeded random order through a DataLoader, as
``dump-teacher`` and ``train-student`` read them (``--workers`` processes, batches of 32), decoding each to
uint8 RGB. Reports images/s per source, the ratio, and the time to open each source (the folder's file scan
against the shards' index build).

    python bench/wds_read.py --make 2000 --json bench/results/wds_read.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import run, write_json

from kdcache._orphans import exit_with_parent
from kdcache.data import open_dataset

HERE = Path(__file__).resolve().parent


def pack(folder: Path, out: Path, per_shard: int) -> str:
    import webdataset as wds

    ds = open_dataset(f"folder:{folder}")
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(ds) // per_shard)
    for s in range(n_shards):
        with wds.TarWriter(str(out / f"train-{s:04d}.tar")) as w:
            for i in range(s * per_shard, min(len(ds), (s + 1) * per_shard)):
                key = ds.keys[i].rsplit(".", 1)[0]
                w.write({"__key__": key, "jpg": (folder / "train" / ds.keys[i]).read_bytes(),
                         "cls": int(ds.labels[i])})
    return str(out / f"train-{{0000..{n_shards - 1:04d}}}.tar")


def _collate(batch):
    return len(batch)


def read_all(ds, order: np.ndarray, workers: int) -> float:
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, order.tolist()), batch_size=32,
                                         num_workers=workers, collate_fn=_collate,
                                         worker_init_fn=exit_with_parent())
    t = time.perf_counter()
    n = sum(loader)
    assert n == len(order)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=None, help="an ImageFolder with a train/ split (else one is made)")
    ap.add_argument("--make", type=int, default=2000, help="images to make when no --folder is given")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp) / "jpeg"
        if not args.folder:
            subprocess.run([sys.executable, str(HERE / "make_jpeg_folder.py"), "--out", str(folder), "--images",
                            str(args.make), "--classes", str(args.classes), "--val-per-class", "1", "--synthetic"],
                           check=True, capture_output=True)
        pattern = pack(folder, Path(tmp) / "shards", args.per_shard)
        specs = {"folder": f"folder:{folder}", "wds": f"wds:{pattern}"}
        open_s: dict[str, list[float]] = {m: [] for m in specs}
        read_s: dict[str, list[float]] = {m: [] for m in specs}
        n = 0
        for r in range(args.rounds):
            for mode, spec in specs.items():  # alternating: folder, wds, folder, wds, ...
                t = time.perf_counter()
                ds = open_dataset(spec)
                open_s[mode].append(time.perf_counter() - t)
                n = len(ds)
                order = np.random.default_rng(r).permutation(n)
                read_s[mode].append(read_all(ds, order, args.workers))
        shard_bytes = sum(p.stat().st_size for p in (Path(tmp) / "shards").glob("*.tar"))
    rows = [{"source": m, "open_s": statistics.median(open_s[m]), "read_s": statistics.median(read_s[m]),
             "images_per_s": n / statistics.median(read_s[m]), "rounds_read_s": read_s[m]} for m in specs]
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print(f"{n} JPEGs, {shard_bytes / 2**20:.1f} MiB in shards of {args.per_shard}, random order, "
          f"{args.workers} workers, {args.rounds} alternating rounds (medians)")
    print(f"{'source':7} {'open s':>7} {'read s':>7} {'images/s':>9}")
    for r in rows:
        print(f"{r['source']:7} {r['open_s']:7.3f} {r['read_s']:7.2f} {r['images_per_s']:9.1f}")
    print(f"wds / folder images/s: {ratio:.2f}x")
    out = {"rows": rows, "wds_over_folder": ratio, "images": n, "shard_bytes": shard_bytes}
    if args.json:
        write_json(args.json, args, **out)
    return out


if __name__ == "__main__":
    run(main)
