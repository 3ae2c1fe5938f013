"""``verify_cache``: check that a cache still says what its teacher says.

A cache is only worth distilling from if (a) its targets are what the teacher outputs on
(b) the views its recorded parameters describe. Verification re-derives both for a seeded
sample of completed (sample, view) pairs: each view is rebuilt from its *recorded*
parameters alone (exactly what a student does), the teacher is run on it again, and the
fresh logits are compared with the cached targets. First, an integrity pass
(``kdcache.cache._integrity.scan_cache``, also available alone as :func:`verify_integrity`)
checks that every chunk of every completed unit exists, passes its checksum and holds finite
targets; damaged units are reported and never replayed. It also reports coverage. All cache
reads are chunk reads of one unit (block × view).

Tolerance. Targets are stored as float16, which keeps 10 explicit mantissa bits: rounding
moves a value by at most half an ulp, ``2**-11 * |x|``. The default tolerance allows one
full ulp of the largest fresh logit, ``2**-10 * max|x|``: the second half-ulp is headroom
for fp32 kernel differences between the dump and this run (other batch composition,
thread count; typically ~1e-6 relative), and an absolute floor of ``1e-2`` covers logits
near zero, where deep nets' absolute fp32 accumulation error dominates relative rounding.
Quantised top-k values (format 2) add their bound, ``TOPK_STEP / 2`` (1/32 of a logit), and are compared
relative to the top logit, as stored. Any real change — other weights, another view, a corrupted entry —
moves logits far more.
A cache dumped with ``--amp`` (bf16/fp16 compute) legitimately differs by more: pass ``atol``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from kdcache._runtime import select_device
from kdcache._teacher import TeacherSpec, build_teacher, target_forward
from kdcache._teacher_input import cache_teacher, teacher_on_views
from kdcache._views import build_views
from kdcache.augment import ViewPipeline, ViewSpec, kernel_versions
from kdcache.cache import CacheStore, TargetMode, canonical_json
from kdcache.cache._embcodec import row_cosine
from kdcache.cache._integrity import scan_cache
from kdcache.cache._targets import TOPK_STEP, decode_targets
from kdcache.cache._teachers import MAIN, open_teacher, teacher_names
from kdcache.data import DataConfig
from kdcache.errors import CacheMismatchError, ConfigError, DataNotFoundError

__all__ = ["verify_cache", "verify_integrity", "cache_data", "cache_teacher", "default_atol", "FP16_ULP",
           "MIN_ATOL", "INT8_STEP", "replay_matches"]

FP16_ULP = 2.0 ** -10   # one float16 ulp relative to the value (10 mantissa bits)
MIN_ATOL = 1e-2
INT8_STEP = 1.0 / 127   # an int8 embedding's step, relative to the vector's largest component


def default_atol(max_abs_logit: float) -> float:
    """One float16 ulp of the largest logit, at least ``MIN_ATOL`` (see the module docstring)."""
    return max(MIN_ATOL, FP16_ULP * float(max_abs_logit))


def verify_integrity(path: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The integrity pass alone (no teacher, no data): every chunk of every done unit exists, passes
    its checksum and holds finite targets; ``done`` and the per-sample arrays too.

    Returns a JSON-safe report; ``ok`` is False when any chunk is damaged (``damage`` names each:
    array, block, view, path, problem).
    """
    store = CacheStore.open(path, mode="r", storage_options=storage_options)
    rep = scan_cache(store)
    report: dict[str, Any] = {"path": store.path, "fingerprint": store.identity.fingerprint,
                              "num_samples": store.num_samples, "num_views": store.num_views,
                              "num_blocks": store.num_blocks, **rep.to_dict()}
    # every added teacher's arrays too: its damage is named by its own path (CACHE/teachers/NAME/...)
    report["teachers"] = {}
    for name in teacher_names(store.path, store.storage_options)[1:]:
        sub = scan_cache(open_teacher(store, name)).to_dict()
        report["teachers"][name] = sub
        report["chunks_checked"] += sub["chunks_checked"]
        report["nonfinite_values"] += sub["nonfinite_values"]
        report["damage"] += sub["damage"]
    report["failures"] = _damage_failures(report)
    report["ok"] = not report["failures"]
    return report


def _damage_failures(r: dict[str, Any]) -> list[str]:
    if not r["damage"]:
        return []
    first = r["damage"][0]["message"]
    more = f" (and {len(r['damage']) - 1} more)" if len(r["damage"]) > 1 else ""
    return [f"{len(r['damage'])} damaged chunks in {len(r['damaged_units'])} units: {first}{more}; "
            "rerun the dump-teacher command that made this cache to repair it"]


def cache_data(store: CacheStore, overrides: DataConfig | Mapping[str, Any] | None = None) -> DataConfig:
    """The data a cache was made from, as recorded in it; ``overrides`` replaces single fields
    (``source``, ``split``, ``limit``, ``subset_seed``), a full :class:`DataConfig` all of them."""
    if isinstance(overrides, DataConfig):
        return overrides
    recorded = dict((store.attrs.get("config") or {}).get("data") or {})
    if not recorded.get("source"):
        d = store.attrs.get("dataset") or {}
        recorded = {k: d[k] for k in ("source", "split") if d.get(k)}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "source" not in recorded and "source" not in given:
        raise ConfigError(f"{store.path} does not record its data source; pass `data`")
    return DataConfig.from_dict({**recorded, **given})


def verify_cache(path: str, teacher: TeacherSpec | Mapping[str, Any] | None = None,
                 data: DataConfig | Mapping[str, Any] | None = None, *,
                 samples: int = 64, seed: int = 0,
                 batch_size: int = 64, device: str = "auto", atol: float | None = None,
                 allow_incomplete: bool = False, storage_options: Mapping[str, Any] | None = None,
                 name: str = MAIN) -> dict[str, Any]:
    """Replay ``samples`` random completed views through ``teacher`` and compare with the cache.

    ``teacher`` and ``data`` default to the teacher and data recorded in the cache (a mapping overrides
    single fields, see :func:`cache_teacher` and :func:`cache_data`). Raises :class:`CacheMismatchError` when ``data`` or ``teacher`` is not
    what the cache was made from. Returns a JSON-safe report whose ``ok`` is False when the largest difference
    exceeds the tolerance, any checked argmax differs, any cached target is NaN/Inf, nothing
    could be checked, or coverage is below 100 % (unless ``allow_incomplete``); ``failures``
    says which, in words.
    """
    if samples < 1 or batch_size < 1:
        raise ConfigError(f"samples and batch size must be >= 1, got {samples} and {batch_size}")
    if atol is not None and not atol >= 0:
        raise ConfigError(f"atol must be >= 0, got {atol!r}")
    root = CacheStore.open(path, mode="r", storage_options=storage_options)
    store = open_teacher(root, name)  # the teacher whose targets are checked (`main`: the cache's own)
    data_cfg = cache_data(root, data)
    try:
        ds = data_cfg.open()
    except DataNotFoundError as e:
        if isinstance(data, DataConfig) or (data or {}).get("source"):
            raise
        raise DataNotFoundError(f"{e} (the data recorded in the cache; pass `data` to use another path)") from e
    store.check_dataset(ds)
    loaded = build_teacher(cache_teacher(store, teacher), num_classes=ds.num_classes)
    _check_teacher(store, loaded.identity())
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    mode = store.target_mode

    integrity = scan_cache(store)  # first: a damaged chunk is reported, never replayed
    done = store.done()
    usable = done.copy()
    for b, v in integrity.damaged_units:
        b0, b1 = store.block_bounds(b)
        usable[b0:b1, v] = False
    if store is not root:  # an added teacher's views are the main cache's: replayed from its parameters
        usable &= root.done()[:, : store.num_views]
    pairs = _sample_pairs(usable, samples, seed)
    picked = {**(_read_units(root, pairs, root.layout.replay_names) if store is not root else {}),
              **_read_units(store, pairs)}
    model = loaded.model if store is root else teacher_on_views(  # as add-teacher ran it on the cache's views
        loaded, pipeline.spec, logits=mode.has_logits, embedding=bool(mode.embedding), log=lambda _m: None)
    fresh = _replay(model, pipeline, ds, pairs, picked, batch_size=batch_size, device=device, mode=mode)

    report: dict[str, Any] = {
        "path": store.path,
        "name": name,
        "fingerprint": store.identity.fingerprint,
        "teacher": loaded.cfg.name,
        "targets": str(mode),
        "num_samples": store.num_samples,
        "num_views": store.num_views,
        "coverage": float(done.mean()) if done.size else 0.0,
        "views_done": int(done.sum()),
        "nonfinite_targets": integrity.nonfinite_values,
        "checksums": integrity.checksums,
        "damaged_units": [list(u) for u in integrity.damaged_units],
        "damage": [d.to_dict() for d in integrity.damage],
        "samples_checked": len(pairs),
        "seed": int(seed),
        "dumped_with_amp": bool(store.attrs.get("config", {}).get("amp", False)),
        "allow_incomplete": bool(allow_incomplete),
        # the kernels' versions then and now: "max_abs_diff" is how far replay drifts when they differ
        "software": {"dump": store.attrs.get("software"), "replay": kernel_versions()},
    }
    report["software"]["differs"] = sorted(
        k for k, v in (report["software"]["dump"] or {}).items() if report["software"]["replay"].get(k) != v)
    report.update(_compare(fresh, picked, pairs, mode, store.keys if len(pairs) else [], atol))
    report["failures"] = _failures(report)
    report["ok"] = not report["failures"]
    return report


def _check_teacher(store: CacheStore, have: dict[str, Any]) -> None:
    """The teacher's identity (name, kwargs, weights sha256) must equal the cache's, part by part."""
    have = json.loads(canonical_json(have))
    want = store.identity.teacher
    diffs = [f"{k}: {_short(have.get(k))} (`teacher`) != {_short(want.get(k))} (cache)"
             for k in sorted(set(want) | set(have)) if have.get(k) != want.get(k)]
    if diffs:
        raise CacheMismatchError(f"{store.path} was made by another teacher: " + "; ".join(diffs))


def _short(v: Any) -> str:
    s = canonical_json(v)
    return s if len(s) <= 24 else s[:21] + "..."


def _sample_pairs(done: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(S, 2) array of (sample, view), drawn without replacement among done pairs, in (sample, view) order."""
    flat = np.flatnonzero(done.ravel())
    rng = np.random.default_rng([int(seed), 0x766572])  # "ver": independent of every other stream
    chosen = np.sort(rng.choice(flat, size=min(samples, flat.size), replace=False))
    return np.stack(np.divmod(chosen, done.shape[1]), axis=1).astype(np.int64).reshape(-1, 2)


def _read_units(store: CacheStore, pairs: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The rows of the sampled pairs (of arrays ``names``, default all), in the order of ``pairs``; each unit read
    once, chunk-aligned."""
    gather = store.layout.names if names is None else list(names)
    wanted: dict[tuple[int, int], list[int]] = defaultdict(list)
    for j, (i, v) in enumerate(pairs):
        wanted[(int(i) // store.block_size, int(v))].append(j)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in gather}
    order: list[np.ndarray] = []
    for (b, v), js in sorted(wanted.items()):
        unit = store.read_unit(b, v, gather)
        local = pairs[js, 0] - store.block_bounds(b)[0]
        for name in gather:
            rows[name].append(unit[name][local])
        order.append(np.asarray(js))
    if not order:
        return {}
    inverse = np.argsort(np.concatenate(order))
    return {n: np.concatenate(r)[inverse] for n, r in rows.items()}


def _replay(model: torch.nn.Module, pipeline: ViewPipeline, ds, pairs: np.ndarray,
            picked: Mapping[str, np.ndarray], *, batch_size: int, device: str, mode: TargetMode
            ) -> dict[str, np.ndarray]:
    """The teacher's ``logits`` and/or ``embedding`` (float32, as the cache's targets hold them) on views rebuilt
    from the recorded parameters alone."""
    names = (["logits"] if mode.has_logits else []) + (["embedding"] if mode.embedding else [])
    if not len(pairs):
        return {n: np.zeros((0, 0), dtype=np.float32) for n in names}
    dev = select_device(device)
    forward = target_forward(model.to(dev), logits=mode.has_logits, embedding=bool(mode.embedding))
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for s in range(0, len(pairs), batch_size):
        js = range(s, min(s + batch_size, len(pairs)))
        params = [pipeline.params_from_arrays(picked, j) for j in js]
        views = build_views(ds, pipeline, [int(pairs[j, 0]) for j in js], params)
        with torch.inference_mode():
            got = dict(zip(("logits", "embedding"), forward(views.to(dev))))
        for n in names:
            out[n].append(got[n].float().cpu().numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def _compare(fresh: Mapping[str, np.ndarray], picked: Mapping[str, np.ndarray], pairs: np.ndarray,
             mode: TargetMode, keys: list[str], atol: float | None) -> dict[str, Any]:
    """Largest |fresh − cached| over the checked views (per mode), argmax agreement, the worst view; for an
    embedding the same over its components, and the smallest cosine similarity."""
    out = {"max_abs_diff": None, "atol": atol, "argmax_agreement": None, "argmax_mismatches": 0, "worst": None}
    if not len(pairs):
        return out
    cached = decode_targets({k: np.asarray(picked[k]) for k in mode.target_names if k in picked})
    if mode.embedding:
        out["embedding"] = _compare_embedding(fresh["embedding"], cached["embedding"], pairs, mode, keys, atol)
    if mode.has_logits:
        out.update(_compare_logits(fresh["logits"], picked, cached, pairs, mode, keys, atol))
    return out


def _compare_embedding(fresh: np.ndarray, cached: np.ndarray, pairs: np.ndarray, mode: TargetMode,
                       keys: list[str], atol: float | None) -> dict[str, Any]:
    """Tolerance per view: one float16 ulp of the view's largest component (at least ``MIN_ATOL``), plus
    half an int8 step of it for int8 vectors."""
    biggest = np.abs(fresh).max(axis=1)
    per_view = np.where(np.isnan(cached).any(axis=1), np.inf, np.abs(fresh - cached).max(axis=1))
    if atol is None:
        tol = np.maximum(MIN_ATOL, FP16_ULP * biggest) + (INT8_STEP / 2 * biggest if mode.embedding == "int8" else 0)
    else:
        tol = np.full(len(per_view), float(atol))
    w = int(np.argmax(per_view - tol))
    cos = row_cosine(fresh, np.nan_to_num(cached, nan=0.0))
    return {"dim": int(fresh.shape[1]), "dtype": mode.embedding, "max_abs_diff": float(per_view.max()),
            "over_tolerance": int((per_view > tol).sum()), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "worst": {"sample": int(pairs[w, 0]), "key": keys[int(pairs[w, 0])], "view": int(pairs[w, 1]),
                      "abs_diff": float(per_view[w]), "atol": float(tol[w]), "cosine": float(cos[w])}}


def _compare_logits(fresh: np.ndarray, picked: Mapping[str, np.ndarray], cached: Mapping[str, np.ndarray],
                    pairs: np.ndarray, mode: TargetMode, keys: list[str], atol: float | None) -> dict[str, Any]:
    """The logits' part of :func:`_compare`."""
    quantised = "topk_tail" in picked  # format-2 top-k: values within TOPK_STEP / 2 of the teacher's
    if mode.kind == "full":
        diff = np.abs(fresh - cached["logits"].astype(np.float32))
    else:
        diff = _topk_diff(fresh, cached, relative=quantised)
    per_view = np.where(np.isnan(diff), np.inf, diff).max(axis=1)
    tol = default_atol(np.abs(fresh).max()) if atol is None else float(atol)
    if quantised and atol is None:
        tol += TOPK_STEP / 2
    agree = fresh.argmax(axis=1) == cached["argmax"].astype(np.int64)
    w = int(per_view.argmax())
    return {
        "max_abs_diff": float(per_view[w]),
        "atol": tol,
        "argmax_agreement": float(agree.mean()),
        "argmax_mismatches": int((~agree).sum()),
        "worst": {"sample": int(pairs[w, 0]), "key": keys[int(pairs[w, 0])], "view": int(pairs[w, 1]),
                  "abs_diff": float(per_view[w])},
    }


def _topk_diff(fresh: np.ndarray, picked: Mapping[str, np.ndarray], *, relative: bool) -> np.ndarray:
    """|teacher logits at the cached indices − cached values|, and the same for the tail log-sum-exp.

    ``relative``: the cached values are relative to the top logit and quantised (format 2), so the teacher's
    are taken relative to its logit at the first cached index.
    An index outside the class range counts as an infinite difference.
    """
    c = fresh.shape[1]
    idx = picked["topk_indices"].astype(np.int64)
    valid = (idx >= 0) & (idx < c)
    safe = np.where(valid, idx, 0)
    gathered = np.take_along_axis(fresh, safe, axis=1)
    t = torch.from_numpy(fresh)
    tail = torch.logsumexp(t.scatter(1, torch.from_numpy(safe), float("-inf")), dim=1).numpy()
    if relative:
        top = gathered[:, :1]
        gathered = gathered - top
        tail = tail - top[:, 0]
    values = np.where(valid, np.abs(gathered - picked["topk_values"].astype(np.float32)), np.inf)
    cached_tail = picked["topk_tail_lse"].astype(np.float32)
    both_empty = np.isneginf(tail) & np.isneginf(cached_tail)
    with np.errstate(invalid="ignore"):
        tail_diff = np.where(both_empty, 0.0, np.abs(tail - cached_tail))
    return np.concatenate([values, tail_diff[:, None]], axis=1)


def replay_matches(r: Mapping[str, Any]) -> bool:
    """Whether the compared views (``_compare``'s report) are within tolerance: logits, argmax and embedding."""
    logits_ok = r["max_abs_diff"] is None or (np.isfinite(r["max_abs_diff"]) and r["max_abs_diff"] <= r["atol"]
                                              and r["argmax_mismatches"] == 0)
    emb = r.get("embedding")
    return bool(logits_ok and (emb is None or emb["over_tolerance"] == 0))


def _failures(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if r["samples_checked"] == 0:
        out.append("no completed views to check (run dump-teacher first)")
    else:
        emb = r.get("embedding")
        if emb is not None and emb["over_tolerance"]:
            w = emb["worst"]
            out.append(f"the teacher's embedding of {emb['over_tolerance']} replayed views differs from the cache "
                       f"beyond tolerance (worst: sample {w['key']!r}, view {w['view']}: max |diff| "
                       f"{w['abs_diff']:.4g} > {w['atol']:.4g}, cosine {w['cosine']:.6f})")
        if r["max_abs_diff"] is not None and not r["max_abs_diff"] <= r["atol"]:
            w = r["worst"]
            hint = " (the cache was dumped with `amp`; pass a larger `atol`)" if r["dumped_with_amp"] else ""
            out.append(f"teacher output on replayed views differs from the cache by up to {r['max_abs_diff']:.4g} "
                       f"> atol {r['atol']:.4g} (worst: sample {w['key']!r}, view {w['view']}){hint}")
        if r["argmax_mismatches"]:
            out.append(f"argmax agrees on {100 * r['argmax_agreement']:.1f}% of checked views "
                       f"({r['argmax_mismatches']} of {r['samples_checked']} differ)")
    if r["nonfinite_targets"]:
        out.append(f"{r['nonfinite_targets']} NaN/Inf values in the cached targets")
    if any(d["problem"] != "nonfinite" for d in r["damage"]):  # NaN/Inf has its own line above
        out.extend(_damage_failures(r))
    if r["coverage"] < 1.0 and not r["allow_incomplete"]:
        out.append(f"coverage {100 * r['coverage']:.2f}% < 100% (rerun dump-teacher to finish it, "
                   "or pass `allow_incomplete`)")
    return out
