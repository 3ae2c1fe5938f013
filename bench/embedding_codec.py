"""Embedding storage codecs against float32: the cosine of float16 and int8 (one scale per vector) vectors.

The teacher (default: the public CIFAR ResNet-56 weights) embeds its own evaluation views of real images
(default: 2,000 CIFAR-10 test images) with :func:`kdcache.models.pooled_embedder` (timm's pooled
pre-logits), one forward pass giving logits and embedding; its top-1 over those views shows the weights
are the trained ones. Each codec encodes the float32 embeddings, decodes them, and the table gives the
cosine similarity against float32 (mean, minimum), the largest error relative to the vector's largest
component, and the bytes per vector. ``--extra timm:resnet18`` adds a randomly initialised (seeded) model
on the same images at the teacher's view size: a second architecture's numbers, not a trained teacher's.
The issue's goal is an int8 cosine >= 0.999 on a real teacher.

    python bench/embedding_codec.py --images 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import add_teacher_args, run, teacher_spec, write_json
from torch.utils.data import DataLoader

from kdcache._teacher import build_teacher
from kdcache._views import EvalViews, identity_collate, resolve_view_spec
from kdcache.augment import ViewPipeline
from kdcache.cache._embcodec import EMBEDDING_DTYPES, EmbeddingCodec, row_cosine
from kdcache.data import DataConfig
from kdcache.engine import TeacherSpec
from kdcache.models import pooled_embedder


def embed_views(loaded, ds, *, size: int | None, batch_size: int) -> dict:
    """float32 embeddings and top-1 of a loaded model over its eval views of ``ds`` (one forward per batch)."""
    spec = resolve_view_spec(loaded.cfg, {"size": size} if size else {})
    loader = DataLoader(EvalViews(ds, ViewPipeline(spec)), batch_size=batch_size, num_workers=0,
                        collate_fn=identity_collate)
    embed = pooled_embedder(loaded.model.eval())
    embs, correct, t0 = [], 0, time.perf_counter()
    with torch.inference_mode():
        for x, y in loader:
            logits, emb = embed(x)
            embs.append(emb.float().numpy())
            correct += int((logits.argmax(dim=1) == y).sum()) if logits is not None else 0
    e = np.concatenate(embs)
    return {"embeddings": e, "top1": correct / len(e), "seconds": time.perf_counter() - t0, "source": embed.source,
            "view_size": spec.size}


def codec_rows(model: str, e: np.ndarray) -> list[dict]:
    rows = []
    peak = np.abs(e).max(axis=1, keepdims=True)
    for dtype in EMBEDDING_DTYPES:
        codec = EmbeddingCodec(dtype)
        t0 = time.perf_counter()
        arrays = codec.encode(e)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = codec.decode(arrays)
        t_dec = time.perf_counter() - t0
        cos = row_cosine(e, d)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(peak > 0, np.abs(d - e) / peak, 0.0)
        rows.append({"model": model, "dtype": dtype, "vectors": len(e), "dim": int(e.shape[1]),
                     "bytes_per_vector": codec.bytes_per_vector(int(e.shape[1])),
                     "stored_bytes": int(sum(a.nbytes for a in arrays.values())),
                     "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                     "cosine_p001": float(np.quantile(cos, 0.001)),
                     "max_error_over_peak": float(rel.max()),
                     "encode_vectors_per_s": len(e) / max(t_enc, 1e-9),
                     "decode_vectors_per_s": len(e) / max(t_dec, 1e-9)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_teacher_args(ap, student=False)
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--extra", action="append", default=[],
                    help="another model, randomly initialised (seeded), at the teacher's view size (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench/results/embedding_codec.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = DataConfig(source=args.data, split=args.split, limit=args.images).open().preload()
    models = [(args.teacher if not args.random_init else f"{args.teacher} (random init)",
               build_teacher(teacher_spec(args), num_classes=ds.num_classes), None)]
    for name in args.extra:
        models.append((f"{name} (random init)", build_teacher(
            TeacherSpec(name=name, random_init=True, init_seed=args.init_seed), num_classes=ds.num_classes), "size"))
    table, embedded = [], {}
    for label, loaded, size_from_teacher in models:
        size = embedded[models[0][0]]["view_size"] if size_from_teacher else None
        out = embed_views(loaded, ds, size=size, batch_size=args.batch_size)
        embedded[label] = out
        print(f"{label}: {len(out['embeddings'])} views at {out['view_size']} px, embedding {out['source']} "
              f"(dim {out['embeddings'].shape[1]}), top-1 {100 * out['top1']:.2f}%, {out['seconds']:.1f} s", flush=True)
        table += codec_rows(label, out["embeddings"])

    print(f"\n{'model':<30} {'dtype':<8} {'dim':>5} {'B/vector':>9} {'cos mean':>11} {'cos min':>11} "
          f"{'1 - cos min':>11} {'max err/peak':>13}")
    for r in table:
        print(f"{r['model']:<30} {r['dtype']:<8} {r['dim']:>5} {r['bytes_per_vector']:>9} {r['cosine_mean']:>11.8f} "
              f"{r['cosine_min']:>11.8f} {1 - r['cosine_min']:>11.2e} {r['max_error_over_peak']:>13.2e}")
    models_json = {k: {"top1": v["top1"], "embedding": v["source"], "view_size": v["view_size"],
                       "seconds": v["seconds"]} for k, v in embedded.items()}
    write_json(args.json, args, images=len(ds), split=args.split, models=models_json, table=table)


if __name__ == "__main__":
    run(main)
