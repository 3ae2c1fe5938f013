"""What ``kdcache info`` reports about a cache: identity, coverage and footprint."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdcache.cache._identity import recorded_subset
from kdcache.cache._integrity import damage_error, scan_cache
from kdcache.cache._store import CacheStore
from kdcache.cache._targets import stored_argmax
from kdcache.cache._teachers import MAIN, open_teacher, teacher_names

__all__ = ["cache_info", "label_agreement"]


def cache_info(path: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    store = CacheStore.open(path, mode="r", storage_options=storage_options)
    # Coverage counts only units whose chunks are all there (a listing per array; no data decoded).
    damage = scan_cache(store, decode=False).damage
    if damage:
        raise damage_error(store.path, damage)
    a = store.attrs
    done = store.done()
    n_views_done = int(done.sum())
    teachers = [_teacher_entry(store, MAIN, done)] + [
        _teacher_entry(open_teacher(store, n), n) for n in teacher_names(store.path, store.storage_options)[1:]]
    size = store.nbytes_on_disk()
    if size is not None and all(t["bytes_on_disk"] is not None for t in teachers[1:]):
        size -= sum(t["bytes_on_disk"] for t in teachers[1:])  # the main cache's own bytes
    teachers[0]["bytes_on_disk"] = size
    per_array: dict[str, dict[str, Any]] = {}
    for name in [*store.view_array_names, "done"]:
        arr = store.array(name)
        per_array[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks)}
    return {
        "path": store.path,
        "kdcache_format": a["kdcache_format"],
        "checksums": store.checksums,
        "fingerprint": store.identity.fingerprint,
        "num_samples": store.num_samples,
        "num_views": store.num_views,
        "num_classes": store.num_classes,
        "targets": str(store.target_mode),
        # the teacher's pooled embedding per view: its length, codec and stored bytes (before compression)
        "embedding": ({"dim": store.layout.embedding_dim, "dtype": store.target_mode.embedding,
                       "bytes_per_view": store.target_mode.codec.bytes_per_vector(store.layout.embedding_dim)}
                      if store.target_mode.embedding else None),
        "block_size": store.block_size,
        "teacher": a.get("teacher", {}),
        "dataset": a.get("dataset", {}),
        # the seeded subset (`limit`) it was made from, None for all of its split: training must give the same
        "subset": dict(zip(("limit", "subset_seed"), subset)) if (subset := recorded_subset(a)) else None,
        "view_spec": a.get("view_spec", {}),
        "view_preset": ((a.get("config") or {}).get("view") or {}).get("preset"),
        "view_ops": _view_ops(store),
        "software": a.get("software"),
        "seed": store.identity.seed,
        "done_fraction": float(done.mean()) if done.size else 0.0,
        "views_done": n_views_done,
        "views_done_per_view": [int(x) for x in done.sum(axis=0)],
        "bytes_on_disk": size,
        "bytes_per_view": (size / n_views_done) if size is not None and n_views_done else None,  # None: no view
        "arrays": per_array,
        "label_agreement": label_agreement(store, done),
        # main (the cache's own teacher, described above) and the teachers added over its views
        "teachers": teachers,
    }


def _teacher_entry(t: CacheStore, name: str, done: np.ndarray | None = None) -> dict[str, Any]:
    """One teacher's line of ``info``: who, which targets, how much of the cache's views it covers."""
    if done is None:
        damage = scan_cache(t, decode=False).damage
        if damage:
            raise damage_error(t.path, damage)
        done = t.done()
    mode = t.target_mode
    return {"name": name, "path": t.path, "teacher": (t.attrs.get("teacher") or {}).get("name"),
            "weights_sha256": t.identity.teacher.get("weights_sha256"), "targets": str(mode),
            "fingerprint": t.identity.fingerprint,
            "embedding_dim": t.layout.embedding_dim, "views_done": int(done.sum()),
            "done_fraction": float(done.mean()) if done.size else 0.0, "label_agreement": label_agreement(t, done),
            "bytes_on_disk": t.nbytes_on_disk() if name != MAIN else None}


def _view_ops(store: CacheStore) -> str:
    from kdcache.augment import ViewSpec
    from kdcache.augment._describe import summarize_spec

    return summarize_spec(ViewSpec.from_dict(store.identity.view_spec))


def label_agreement(store: CacheStore, done: np.ndarray) -> float | None:
    """Fraction of complete views whose teacher argmax equals the sample's label (None: no view, or no logits)."""
    if not done.any() or not store.target_mode.has_logits:
        return None
    name = "argmax" if "argmax" in store.layout.specs else "topk_indices"  # format-2 top-k: the first index
    argmax = stored_argmax({name: store.read_array(name, check_missing=False)[:, : store.num_views]})
    return float((argmax == store.labels[:, None])[done].mean())
