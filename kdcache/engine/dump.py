"""The dump engine: run a teacher once over V augmented views of a dataset into a cache.

Work is split into units (a block of samples × one view); each unit owns one chunk of
every per-view array, is computed in order, checked (no NaN/Inf), written, and only then
marked done. A rerun of the same command computes only units that are not done, so a
killed dump resumes; ``add_views`` grows the cache and computes only the new views.
Under torchrun, rank 0 prepares the store's metadata, then every rank takes its share of
the pending units (``units[rank::world]``) — disjoint chunks — and the result is the
same store a single process writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdcache.augment import ViewPipeline, ViewSpec, param_array_specs
from kdcache.cache import CacheIdentity, CacheStore, TargetMode, dataset_identity, is_url
from kdcache.cache.info import label_agreement
from kdcache.cache.layout import VIEW_SEED, UnitLayout
from kdcache.config import ConfigBase
from kdcache.data import DataConfig
from kdcache.engine.teacher import TeacherSpec, build_teacher
from kdcache.errors import CacheError, CacheMismatchError, ConfigError, KdcacheError, TeacherOutputError
from kdcache.runtime import DistContext, autocast, select_device
from kdcache.views import UnitBatches, ViewBatch, ViewDraws, identity_collate, resolve_view_spec

__all__ = ["DumpConfig", "DumpSummary", "dump_teacher"]



@dataclass(frozen=True)
class DumpConfig(ConfigBase):
    data: DataConfig
    out: str
    teacher: TeacherSpec
    views: int | None = None          # None: 4 for a new cache, the cache's own count for a resume
    add_views: int = 0
    seed: int = 0
    targets: str = "full"
    view: dict[str, Any] = field(default_factory=dict)   # ViewSpec overrides (None values ignored)
    batch_size: int = 128
    workers: int = 2
    block_size: int = 1024
    device: str = "auto"
    amp: bool = False
    storage_options: dict[str, Any] | None = None


@dataclass
class DumpSummary:
    out: str
    num_samples: int
    num_views: int
    num_classes: int
    targets: str
    units_computed: int
    views_computed: int
    seconds: float
    images_per_second: float
    label_agreement: float | None
    bytes_on_disk: int | None
    done_fraction: float
    fingerprint: str
    rank: int = 0  # under torchrun every rank returns a summary; only rank 0 should report it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_layout(mode: TargetMode, spec: ViewSpec, ds) -> UnitLayout:
    """A new cache's unit layout; crop boxes narrowed when every image has the same, known shape."""
    side = ds.max_side()
    return UnitLayout.build(mode, ds.num_classes, param_array_specs(spec),
                            max_coordinate=None if side is None else max(side, spec.size))


def _prepare_store(cfg: DumpConfig, ds, identity: CacheIdentity, attrs: dict[str, Any], spec: ViewSpec,
                   log: Callable[[str], None]) -> CacheStore:
    """Create, resume or extend the store (rank 0 only). Never modifies a cache that does not match."""
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
        if not is_url(cfg.out):
            parent = os.path.dirname(os.path.abspath(cfg.out))
            if not os.path.isdir(parent):
                what = "is not a directory" if os.path.exists(parent) else "does not exist"
                raise CacheError(f"cannot create {cfg.out}: {parent} {what}")
        try:
            return CacheStore.create(
                cfg.out, identity=identity, keys=ds.keys, labels=ds.labels, num_classes=ds.num_classes,
                num_views=cfg.views or 4, layout=unit_layout(TargetMode.parse(identity.targets), spec, ds), attrs=attrs,
                block_size=cfg.block_size, storage_options=cfg.storage_options)
        except OSError as e:
            raise CacheError(f"cannot create {cfg.out}: {e.strerror or e}") from e
    store = CacheStore.open(cfg.out, mode="r+", storage_options=cfg.storage_options)
    store.check_identity(identity)
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
            raise CacheError(f"cannot extend {cfg.out}: {e.strerror or e}") from e
        log(f"{cfg.out}: views {old} -> {store.num_views}")
    elif cfg.views is not None and cfg.views != store.num_views:
        raise ConfigError(f"{cfg.out} has {store.num_views} views, not {cfg.views}; "
                          f"use `add_views` {max(cfg.views - store.num_views, 1)} to compute more views")
    return store


def _unit_arrays(mode: TargetMode, logits: torch.Tensor, batch: list[ViewBatch], pipeline: ViewPipeline,
                 where: str) -> dict[str, np.ndarray]:
    """Targets + recorded parameters of one unit; refuses non-finite teacher outputs."""
    bad = (~torch.isfinite(logits)).any(dim=1)
    if bool(bad.any()):
        raise TeacherOutputError(f"the teacher produced NaN/Inf for {int(bad.sum())} views of {where}; "
                                 "nothing of it was marked done (check the weights and `amp`)")
    if not bool(torch.isfinite(logits.to(torch.float16)).all()):
        raise TeacherOutputError(f"teacher logits of {where} overflow float16 (|x| > 65504)")
    out = mode.encode(logits)
    out.update(pipeline.params_to_arrays([p for b in batch for p in b.params]))
    out[VIEW_SEED] = np.concatenate([b.seeds for b in batch])
    return out


def dump_teacher(cfg: DumpConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> DumpSummary:
    """Run the teacher over every pending (block, view) unit of ``cfg.out``. See module docstring."""
    if cfg.views is not None and cfg.views < 1:
        raise ConfigError(f"`views` must be >= 1, got {cfg.views}")
    if cfg.batch_size < 1 or cfg.block_size < 1 or cfg.workers < 0:
        raise ConfigError("batch size and block size must be >= 1 and workers >= 0")
    mode = TargetMode.parse(cfg.targets)
    ctx = DistContext.from_env(cfg.device)
    try:
        return _dump(cfg, mode, ctx, progress=progress and ctx.is_main, log=log if ctx.is_main else _quiet)
    finally:
        ctx.close()


def _quiet(_msg: str) -> None:
    pass


def _run_units(model, loader, units, store: CacheStore, mode: TargetMode, pipeline: ViewPipeline,
               device: torch.device, cfg: DumpConfig, bar) -> None:
    """Teacher forward over the loader's batches; each finished unit is checked, written, marked done."""
    pending: list[ViewBatch] = []
    outputs: list[torch.Tensor] = []
    unit_iter = iter(units)
    unit = next(unit_iter, None)
    rows = 0
    for batch in loader:
        with torch.inference_mode(), autocast(device, cfg.amp):
            logits = model(batch.images.to(device, non_blocking=True))
        pending.append(batch)
        outputs.append(logits.float().cpu())
        rows += len(batch.indices)
        b, v = unit
        b0, b1 = store.block_bounds(b)
        if rows == b1 - b0:
            where = f"block {b} (samples {b0}-{b1 - 1}), view {v}"
            arrays = _unit_arrays(mode, torch.cat(outputs), pending, pipeline, where)
            try:
                store.write_unit(b, v, arrays)
            except OSError as e:
                raise CacheError(f"writing {cfg.out} failed at {where}: {e.strerror or e}; "
                                 "earlier units are intact, rerun to resume") from e
            bar.update(b1 - b0)
            pending, outputs, rows = [], [], 0
            unit = next(unit_iter, None)


def _dump(cfg: DumpConfig, mode: TargetMode, ctx: DistContext, *, progress: bool,
          log: Callable[[str], None]) -> DumpSummary:
    ds = cfg.data.open().preload()  # resident before forking workers: one shared copy
    mode.check_classes(ds.num_classes)
    teacher = build_teacher(cfg.teacher, num_classes=ds.num_classes)
    spec = resolve_view_spec(teacher.cfg, cfg.view)
    pipeline = ViewPipeline(spec)
    identity = CacheIdentity(teacher=teacher.identity(), dataset=dataset_identity(ds), view_spec=spec.to_dict(),
                             seed=int(cfg.seed), targets=str(mode))
    attrs = {
        "view_spec": pipeline.describe(),
        "teacher": teacher.describe(),
        "dataset": {**ds.describe(), "source": ds.source},
        "config": cfg.to_dict(),
    }
    # Rank 0 alone touches metadata; the others wait, then open what it made (or fail with it).
    error = None
    if ctx.is_main:
        try:
            store = _prepare_store(cfg, ds, identity, attrs, spec, log)
        except KdcacheError as e:
            error = e
    if ctx.distributed:
        msg = ctx.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if msg is not None and error is None:
            raise CacheError(f"rank 0 failed: {msg}")
    if error is not None:
        raise error
    ctx.barrier()
    if not ctx.is_main:
        store = CacheStore.open(cfg.out, mode="r+", storage_options=cfg.storage_options)
        store.check_identity(identity)

    all_units = store.pending_units()
    # Every rank must slice the same list: nobody writes a unit before all ranks have read it.
    ctx.barrier()
    units = all_units[ctx.rank::ctx.world_size]
    device = select_device(cfg.device, local_rank=ctx.local_rank)
    model = teacher.model.to(device)
    loader = DataLoader(
        ViewDraws(ds, pipeline, cfg.seed),
        batch_sampler=UnitBatches(units, store.block_bounds, cfg.batch_size),
        num_workers=cfg.workers,
        collate_fn=identity_collate,
        pin_memory=device.type == "cuda",
    )

    def unit_rows(u: tuple[int, int]) -> int:
        b0, b1 = store.block_bounds(u[0])
        return b1 - b0

    my_views = sum(unit_rows(u) for u in units)
    total_views = sum(unit_rows(u) for u in all_units)
    bar = tqdm(total=my_views, desc=f"dump-teacher[{ctx.rank}]" if ctx.distributed else "dump-teacher",
               unit="view", disable=not progress)
    t0 = time.perf_counter()
    failure: BaseException | None = None
    try:
        _run_units(model, loader, units, store, mode, pipeline, device, cfg, bar)
    except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
        failure = e
    # A rank that failed must not leave the others waiting at a barrier forever.
    others_failed = ctx.any(failure is not None)
    if failure is not None:
        raise failure
    if others_failed:
        raise CacheError("another rank failed (see its message); units written so far are intact, rerun to resume")
    bar.close()
    seconds = time.perf_counter() - t0
    ctx.barrier()
    store = CacheStore.open(cfg.out, mode="r", storage_options=cfg.storage_options)
    done = store.done()
    agreement = label_agreement(store, done)
    return DumpSummary(
        out=cfg.out, num_samples=store.num_samples, num_views=store.num_views, num_classes=store.num_classes,
        targets=str(mode), units_computed=len(all_units), views_computed=total_views,
        seconds=seconds, images_per_second=(total_views / seconds) if seconds > 0 and total_views else 0.0,
        label_agreement=agreement, bytes_on_disk=store.nbytes_on_disk(), done_fraction=float(done.mean()),
        fingerprint=store.identity.fingerprint, rank=ctx.rank)

