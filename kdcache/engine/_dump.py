"""The dump engine: run a teacher once over V augmented views of a dataset into a cache.

Work is split into units (a block of samples × one view); each unit owns one chunk of
every per-view array, is checked (no NaN/Inf), written, and only then marked done. A
rerun of the same command computes only units that are not done, so a killed dump
resumes; ``add_views`` grows the cache and computes only the new views.

Decoding is the costly part of a data path of full-size JPEGs, so work runs block by block, each image
decoded once for all its pending views, and finished units go to a background writer while the teacher runs
the next block (:mod:`kdcache.engine._compute`, shared with ``add-teacher``); a failed write stops the dump
with that unit not done.
Under torchrun, rank 0 prepares the store's metadata, then every rank takes its share of
the blocks with pending units (``blocks[rank::world]``) — disjoint chunks — and the result
is the same store a single process writes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from kdcache._runtime import DistContext
from kdcache._teacher import build_teacher, embedding_dim
from kdcache._views import (
    ViewDraws,
    describe_view_sources,
    resolve_view_sources,
)
from kdcache.augment import ViewPipeline, ViewSpec, kernel_versions, param_array_specs
from kdcache.augment._ops import pad_canvas
from kdcache.cache import CacheIdentity, CacheStore, TargetMode, dataset_identity, is_url
from kdcache.cache._integrity import scan_cache
from kdcache.cache._layout import UnitLayout
from kdcache.cache._remote import storage_errors
from kdcache.cache._restore import restore_metadata
from kdcache.engine._advice import from_the_rerun
from kdcache.engine._cache_views import existing_views, views_of_cache
from kdcache.engine._compute import block_views, block_work, compute_work, work_summary
from kdcache.engine._dumpconfig import DumpConfig, DumpSummary
from kdcache.engine._lock import WriterLock, parse_shard
from kdcache.engine._preflight import make_parents, preflight, remove_empty
from kdcache.engine._reseal import confirm_reseal
from kdcache.engine._space import space_hint
from kdcache.errors import CacheError, CacheMismatchError, ConfigError, KdcacheError

__all__ = ["DumpConfig", "DumpSummary", "dump_teacher"]



def unit_layout(mode: TargetMode, spec: ViewSpec, ds, embedding_dim: int | None = None) -> UnitLayout:
    """A new cache's unit layout; crop boxes narrowed when every image has the same, known shape."""
    side = ds.max_side()
    if side is not None and spec.crop == "pad":
        side = max(pad_canvas(spec, ds.image_size(0)))  # offsets into the resized, padded image
    return UnitLayout.build(mode, ds.num_classes, param_array_specs(spec),
                            max_coordinate=None if side is None else max(side, spec.size), embedding_dim=embedding_dim)


def _prepare_store(cfg: DumpConfig, ds, identity: CacheIdentity, attrs: dict[str, Any], layout: UnitLayout,
                   spec: ViewSpec, log: Callable[[str], None], teacher=None) -> CacheStore:
    """Create, resume or extend the store (rank 0 only). Never modifies a cache that does not match."""
    # Damaged metadata or an edited description: rebuilt from the seal's copy and this command, or named.
    unsealed = restore_metadata(cfg.out, identity=identity, layout=layout, storage_options=cfg.storage_options,
                                log=log, described=attrs)
    existing = CacheStore.peek_attrs(cfg.out, cfg.storage_options)
    create_new = existing is None
    if existing is not None:
        if "kdcache_format" not in existing:
            raise CacheError(f"{cfg.out} exists and is not a kdcache cache; refusing to overwrite it")
        if not existing.get("ready"):
            if existing.get("fingerprint") != identity.fingerprint:
                raise CacheMismatchError(f"{cfg.out} is a half-created cache of another configuration; "
                                         "delete it or choose another `out`")
            log(f"{cfg.out}: creation was interrupted; recreating it")
            create_new = True
    if create_new:
        if cfg.add_views:
            raise ConfigError(f"`add_views` needs an existing cache, but {cfg.out} does not exist")
        try:
            return CacheStore.create(
                cfg.out, identity=identity, keys=ds.keys, labels=ds.labels, num_classes=ds.num_classes,
                num_views=cfg.views or 4, layout=layout, attrs=attrs,
                block_size=cfg.block_size, storage_options=cfg.storage_options)
        except OSError as e:
            removed = _remove_new_store(cfg.out) if existing is None else False
            raise CacheError(f"cannot create {cfg.out}: {e.strerror or e}{space_hint(e, cfg.out)}"
                             + ("; the half-made cache was removed" if removed else "")) from e
    try:
        store = CacheStore.open(cfg.out, mode="r+", storage_options=cfg.storage_options)
    except KdcacheError as e:  # what the repairs above could not fix: no "rerun this command" advice
        raise from_the_rerun(e, cfg.out) from e
    store.check_identity(identity)
    if unsealed is not None:  # resealed without a copy: only if the stored targets are this teacher's
        confirm_reseal(store, unsealed, teacher.model, ViewPipeline(spec), ds, layout=layout, device=cfg.device,
                       log=log)
    if not cfg.add_views and cfg.views is not None and cfg.views != store.num_views:
        raise ConfigError(f"{cfg.out} has {store.num_views} views, not {cfg.views}; "
                          f"use `add_views` {max(cfg.views - store.num_views, 1)} to compute more views")
    _repair(store, ds, log)
    if cfg.add_views:
        old = store.num_views
        last = store.attrs.get("last_add") or {}
        if (last.get("to") == old and old - last.get("from", old) == cfg.add_views
                and any(v >= last["from"] for _, v in store.pending_units())):
            log(f"{cfg.out}: resuming the interrupted addition of views {last['from']}-{old - 1}")
            return store
        try:
            store.add_views(cfg.add_views)
        except OSError as e:
            raise CacheError(f"cannot extend {cfg.out}: {e.strerror or e}{space_hint(e, cfg.out)}") from e
        log(f"{cfg.out}: views {old} -> {store.num_views}")
    return store


def _repair(store: CacheStore, ds, log: Callable[[str], None]) -> None:
    """Find damaged chunks (missing, failing their checksum, NaN/Inf) and make the dump redo them.

    Damaged units are marked not done, so this run recomputes exactly those (with the bytes an
    uninterrupted dump writes); damaged per-sample arrays are rewritten from the dataset.
    """
    rep = scan_cache(store)
    if not rep.damage:
        return
    units = rep.damaged_units
    log(f"{store.path}: {len(rep.damage)} damaged chunks ({'; '.join(d.describe() for d in rep.damage[:3])}"
        f"{'; ...' if len(rep.damage) > 3 else ''}); recomputing {len(units)} units")
    try:
        if rep.damaged_sample_arrays:
            store.rewrite_samples(ds.keys, ds.labels)
        store.clear_units(units)
    except OSError as e:
        raise CacheError(f"cannot repair {store.path}: {e.strerror or e}{space_hint(e, store.path)}") from e


def dump_teacher(cfg: DumpConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> DumpSummary:
    """Run the teacher over every pending (block, view) unit of ``cfg.out``. See module docstring."""
    if cfg.views is not None and cfg.views < 1:
        raise ConfigError(f"`views` must be >= 1, got {cfg.views}")
    if cfg.batch_size < 1 or cfg.block_size < 1 or cfg.workers < 0:
        raise ConfigError("batch size and block size must be >= 1 and workers >= 0")
    mode = TargetMode.parse(cfg.targets)
    parse_shard(cfg.shard)  # a bad I/N is refused before any work
    ctx = DistContext.from_env(cfg.device)
    try:
        preflight(cfg.out, cfg.device, local_rank=ctx.local_rank)  # before loading data and teacher
        return _dump(cfg, mode, ctx, progress=progress and ctx.is_main, log=log if ctx.is_main else _quiet)
    finally:
        ctx.close()


def _remove_new_store(out: str) -> bool:
    """Delete a local cache directory this run created; False for URLs (left to their owner)."""
    if is_url(out) or not os.path.isdir(out):
        return False
    shutil.rmtree(out, ignore_errors=True)
    return True


def _after_failure(cfg: DumpConfig, ctx: DistContext) -> tuple[str, bool]:
    """After a failed dump (all ranks stopped): a cache with no finished unit is removed, since it holds
    nothing; otherwise it is kept, resumable. Returns what happened (for the message) and whether removed."""
    if not ctx.is_main:
        return "", False
    try:
        store = CacheStore.open(cfg.out, mode="r", storage_options=cfg.storage_options)
        du = store.done_units()
    except KdcacheError:
        return "", False
    if not du.any():
        removed = _remove_new_store(cfg.out)
        return (f"nothing was computed, so {cfg.out} was removed" if removed else ""), removed
    return (f"{int(du.sum())} of {du.size} units are done and kept in {cfg.out}: once the cause is fixed, rerun "
            "the same command to resume", False)


def _quiet(_msg: str) -> None:
    pass


def after_rank0(ctx: DistContext, error: BaseException | None) -> None:
    """After rank 0 prepared a store (``error``: how it failed, on rank 0): every rank raises (rank 0 its own
    error, the others one naming it) or all go on together, past a barrier."""
    if ctx.distributed:
        msg = ctx.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if msg is not None and error is None:
            raise CacheError(f"rank 0 failed: {msg}")
    if error is not None:
        raise error
    ctx.barrier()


def _dump(cfg: DumpConfig, mode: TargetMode, ctx: DistContext, *, progress: bool,
          log: Callable[[str], None]) -> DumpSummary:
    ds = cfg.data.open().preload()  # resident before forking workers: one shared copy
    mode.check_classes(ds.num_classes)
    teacher = build_teacher(cfg.teacher, num_classes=ds.num_classes)
    cached = existing_views(cfg.out, cfg.storage_options)  # a resume or --add-views: the cache's own views
    spec, sources = (views_of_cache(cached, cfg.view, cfg.out) if cached is not None else
                     resolve_view_sources(teacher.cfg, cfg.view, recorded=teacher.views,
                                          recorded_from=teacher.views_from or "the checkpoint"))
    log(describe_view_sources(spec, sources))
    pipeline = ViewPipeline(spec)
    # the embedding's length, from one blank view through the teacher (before a cache is made)
    emb_dim = embedding_dim(teacher.model, spec.size, logits=mode.has_logits) if mode.embedding else None
    layout = unit_layout(mode, spec, ds, emb_dim)
    identity = CacheIdentity(teacher=teacher.identity(), dataset=dataset_identity(ds), view_spec=spec.replay_dict(),
                             seed=int(cfg.seed), targets=str(mode))
    described = pipeline.describe()  # the parameter arrays' dtypes as stored (crop arrays narrowed)
    described["param_arrays"] = layout.on_disk(described["param_arrays"])
    attrs = {
        "view_spec": described,
        "teacher": teacher.describe(),
        "dataset": {**ds.describe(), "source": ds.source},
        "config": cfg.recorded(),  # no shard, no credentials
        # the kernels' versions: replay on other versions may drift (verify reports by how much)
        "software": kernel_versions(),
    }
    # Rank 0 alone touches metadata; the others wait, then open what it made (or fail with it).
    # Rank 0 also holds the writer lock: another dump of the same work refuses, naming this one.
    shard = parse_shard(cfg.shard)
    made = make_parents(cfg.out) if ctx.is_main else []  # the lock folder sits beside the store
    lock = WriterLock(cfg.out, shard, storage_options=cfg.storage_options) if ctx.is_main else None
    try:
        try:
            return _dump_locked(cfg, ds, mode, ctx, teacher, spec, pipeline, identity, attrs, layout, shard, lock,
                                progress=progress, log=log)
        finally:
            if lock is not None:
                lock.release()
    except BaseException:
        remove_empty(made)  # a kept cache keeps them
        raise


def _dump_locked(cfg: DumpConfig, ds, mode: TargetMode, ctx: DistContext, teacher, spec: ViewSpec,
                 pipeline: ViewPipeline, identity: CacheIdentity, attrs: dict[str, Any], layout: UnitLayout, shard,
                 lock,
                 *, progress: bool, log: Callable[[str], None]) -> DumpSummary:
    error = None
    if ctx.is_main:
        try:
            with storage_errors(cfg.out, cfg.storage_options):  # the lock files reach the store first
                lock.hold_meta(log=log)
                try:
                    lock.acquire()
                    store = _prepare_store(cfg, ds, identity, attrs, layout, spec, log, teacher)
                finally:
                    lock.release_meta()
        except KdcacheError as e:
            error = e
    after_rank0(ctx, error)
    if not ctx.is_main:
        store = CacheStore.open(cfg.out, mode="r+", storage_options=cfg.storage_options)
        store.check_identity(identity)

    all_work = block_work(store.pending_units())
    if shard is not None:
        all_work = [(b, vs) for b, vs in all_work if b % shard[1] == shard[0]]
    # Every rank must slice the same list: nobody writes a unit before all ranks have read it.
    ctx.barrier()
    work = all_work[ctx.rank::ctx.world_size]

    bar = tqdm(total=block_views(store, work), desc=f"dump-teacher[{ctx.rank}]" if ctx.distributed else "dump-teacher",
               unit="view", disable=not progress)
    t0 = time.perf_counter()
    failure, others_failed = compute_work(ctx, store, cfg.out, teacher.model, ViewDraws(ds, pipeline, cfg.seed),
                                          work, pipeline, cfg, bar)
    # A shard never removes the store: other shards may be writing it.
    note, removed = (_after_failure(cfg, ctx) if (failure is not None or others_failed) and shard is None
                     else ("", False))
    if failure is not None:
        # Cache errors already say what is kept; every message says when the cache was removed.
        if note and isinstance(failure, KdcacheError) and (removed or not isinstance(failure, CacheError)):
            raise type(failure)(f"{failure}; {note}") from failure
        raise failure
    return work_summary(ctx, store, cfg.out, cfg.storage_options, all_work, bar, t0, others_failed)
