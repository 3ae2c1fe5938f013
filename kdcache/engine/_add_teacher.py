"""Adding a teacher to a cache: its targets over the views the cache already recorded (``kdcache add-teacher``).

No view is drawn anew: every done unit of the main cache is replayed from its recorded parameters
(:class:`~kdcache._views.RecordedViews`), each image decoded once for all its pending views, and the added
teacher's targets are written to its own group ``teachers/<name>/`` (:mod:`kdcache.cache._teachers`) by the
dump's own machinery: block batches, the background writer, ``done`` written last, non-finite outputs
refused. So the added teacher resumes after a kill, finds and recomputes damaged chunks of its own arrays
(never touching the main cache or another teacher's), and holds its own writer lock. Run it again after
views were added to the cache (``dump-teacher --add-views``) and it computes the new views only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from kdcache._config import ConfigBase
from kdcache._runtime import DistContext
from kdcache._teacher import TeacherSpec, build_teacher, embedding_dim
from kdcache._teacher_input import teacher_on_views
from kdcache._utils import recordable_config
from kdcache._views import RecordedViews
from kdcache.augment import ViewPipeline, ViewSpec, kernel_versions
from kdcache.cache import CacheIdentity, CacheStore, TargetMode, UnitLayout
from kdcache.cache._restore import restore_metadata
from kdcache.cache._teachers import (
    TEACHERS_FORMAT,
    check_name,
    check_views_of,
    make_teachers_group,
    teacher_path,
)
from kdcache.data import DataConfig
from kdcache.engine._compute import block_views, block_work, compute_work, work_summary
from kdcache.engine._dump import _remove_new_store, _repair, after_rank0
from kdcache.engine._dumpconfig import DumpSummary
from kdcache.engine._lock import WriterLock
from kdcache.engine._preflight import preflight
from kdcache.engine._space import space_hint
from kdcache.engine._verify import cache_data
from kdcache.errors import CacheError, CacheMetadataError, ConfigError, KdcacheError

__all__ = ["AddTeacherConfig", "add_teacher"]


@dataclass(frozen=True)
class AddTeacherConfig(ConfigBase):
    """What ``kdcache add-teacher`` is asked to do: teacher ``name`` with ``targets`` over the views of ``cache``
    (its data as the cache records it unless ``data`` is given); recorded in the teacher's group."""

    cache: str
    name: str
    teacher: TeacherSpec
    targets: str = "full"
    data: DataConfig | None = None    # None: the data the cache records
    batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    storage_options: dict[str, Any] | None = None

    def recorded(self) -> dict[str, Any]:
        return recordable_config(self)  # credentials redacted


def add_teacher(cfg: AddTeacherConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> DumpSummary:
    """Compute teacher ``cfg.name``'s targets for every done view of the cache ``cfg.cache`` not yet computed.

    Under torchrun, rank 0 prepares the teacher's group (and holds its writer lock), then every rank takes its
    share of the blocks with pending units, as ``dump_teacher`` does: the result is the single-process group."""
    check_name(cfg.name, adding=True)
    if cfg.batch_size < 1 or cfg.workers < 0:
        raise ConfigError("batch size must be >= 1 and workers >= 0")
    TargetMode.parse(cfg.targets)
    ctx = DistContext.from_env(cfg.device)
    try:
        return _add(cfg, ctx, progress=progress and ctx.is_main, log=log if ctx.is_main else _quiet)
    finally:
        ctx.close()


def _quiet(_msg: str) -> None:
    pass


def _add(cfg: AddTeacherConfig, ctx: DistContext, *, progress: bool, log: Callable[[str], None]) -> DumpSummary:
    mode = TargetMode.parse(cfg.targets)
    root = CacheStore.open(cfg.cache, mode="r", storage_options=cfg.storage_options)
    path = teacher_path(root.path, cfg.name)
    preflight(path, cfg.device, local_rank=ctx.local_rank)
    data_cfg = cache_data(root, cfg.data)
    ds = data_cfg.open().preload()  # resident before forking workers
    root.check_dataset(ds)
    mode.check_classes(ds.num_classes)
    teacher = build_teacher(cfg.teacher, num_classes=ds.num_classes)
    spec = ViewSpec.from_dict(root.identity.view_spec)
    pipeline = ViewPipeline(spec)
    # the teacher as it takes the cache's views (renormalised to its own mean/std; a size it cannot take refused)
    model = teacher_on_views(teacher, spec, logits=mode.has_logits, embedding=bool(mode.embedding), log=log)
    emb_dim = embedding_dim(model, spec.size, logits=mode.has_logits) if mode.embedding else None
    layout = UnitLayout.build(mode, ds.num_classes, {}, embedding_dim=emb_dim)  # targets only
    # the views are the main cache's: its dataset, view spec and seed; its fingerprint in `views_of`
    identity = CacheIdentity(teacher=teacher.identity(), dataset=root.identity.dataset,
                             view_spec=root.identity.view_spec, seed=root.identity.seed, targets=str(mode))
    attrs = {"kdcache_format": TEACHERS_FORMAT, "teacher_name": cfg.name, "views_of": root.identity.fingerprint,
             "teacher": teacher.describe(), "dataset": root.attrs.get("dataset"),
             "config": {**cfg.recorded(), "data": data_cfg.to_dict()}, "software": kernel_versions()}
    lock, error, created = None, None, False
    if ctx.is_main:  # rank 0 alone touches metadata, under the group's writer lock
        try:
            make_teachers_group(root.path, cfg.storage_options)  # teachers/: the lock folder sits beside the group
            lock = WriterLock(path, storage_options=cfg.storage_options)
            lock.hold_meta(log=log)
            try:
                lock.acquire()
                store, created = _prepare(cfg, root, path, ds, identity, layout, attrs, log)
            finally:
                lock.release_meta()
        except KdcacheError as e:
            error = e
            if lock is not None:
                lock.release()
    after_rank0(ctx, error)
    try:
        if not ctx.is_main:
            store = CacheStore.open(path, mode="r+", storage_options=cfg.storage_options)
        return _compute(cfg, ctx, root, store, created, ds, pipeline, model, progress=progress)
    finally:
        if lock is not None:
            lock.release()


def _prepare(cfg: AddTeacherConfig, root: CacheStore, path: str, ds, identity: CacheIdentity, layout: UnitLayout,
             attrs: dict[str, Any], log: Callable[[str], None]) -> tuple[CacheStore, bool]:
    """Create the teacher's group, or open it for a resume (same teacher and targets, these views), repair
    its damage and give it the cache's views. Returns the store and whether it was created now."""
    if restore_metadata(path, identity=identity, layout=layout, storage_options=cfg.storage_options, log=log,
                        described=attrs) is not None:
        raise CacheMetadataError(f"teacher {cfg.name!r} of {root.path}: its seal is gone and cannot be restored; "
                                 f"delete {path} and add the teacher again")
    existing = CacheStore.peek_attrs(path, cfg.storage_options)
    if existing is None or not existing.get("ready"):
        try:
            store = CacheStore.create(path, identity=identity, keys=ds.keys, labels=ds.labels,
                                      num_classes=ds.num_classes, num_views=root.num_views, layout=layout,
                                      attrs=attrs, block_size=root.block_size, storage_options=cfg.storage_options)
        except OSError as e:
            _remove_new_store(path)
            raise CacheError(f"cannot create {path}: {e.strerror or e}{space_hint(e, path)}") from e
        log(f"{root.path}: adding teacher {cfg.name!r} ({identity.teacher.get('name')}, targets {identity.targets})")
        return store, True
    store = CacheStore.open(path, mode="r+", storage_options=cfg.storage_options)
    check_views_of(root, store, cfg.name)
    diffs = identity.differences(store.identity)
    if diffs:  # one name, one teacher: another teacher (or other targets) under this name is refused
        raise ConfigError(f"teacher {cfg.name!r} of {root.path} exists and is another teacher or other targets "
                          f"(requested != cached): {'; '.join(diffs)}; choose another name")
    _repair(store, ds, log)
    if store.num_views < root.num_views:
        log(f"{path}: views {store.num_views} -> {root.num_views} (views added to the cache)")
        store.add_views(root.num_views - store.num_views)
    return store, False


def _compute(cfg: AddTeacherConfig, ctx: DistContext, root: CacheStore, store: CacheStore, created: bool, ds,
             pipeline: ViewPipeline, model, *, progress: bool) -> DumpSummary:
    """The added teacher's forward over every unit done in the main cache and not in the teacher's group (this
    rank's share of the blocks)."""
    pending = root.done_units() & ~store.done_units()[:, : root.num_views]
    all_work = block_work([(int(b), int(v)) for b, v in zip(*pending.nonzero())])
    ctx.barrier()  # every rank has read the same pending units before any writes
    work = all_work[ctx.rank::ctx.world_size]
    units = root.read_units([(b, v) for b, vs in work for v in vs], root.layout.replay_names)  # one round trip

    bar = tqdm(total=block_views(store, work), desc=f"add-teacher {cfg.name}", unit="view", disable=not progress)
    t0 = time.perf_counter()
    views = RecordedViews(ds, pipeline, units, root.block_size)
    failure, others_failed = compute_work(ctx, store, store.path, model, views, work, pipeline, cfg, bar)
    removed = False
    if (failure is not None or others_failed) and ctx.is_main and created:
        if not CacheStore.open(store.path, mode="r", storage_options=cfg.storage_options).done_units().any():
            removed = _remove_new_store(store.path)
    if failure is not None:
        if removed and isinstance(failure, KdcacheError):
            raise type(failure)(f"{failure}; nothing was computed, so {store.path} was removed") from failure
        raise failure
    return work_summary(ctx, store, store.path, cfg.storage_options, all_work, bar, t0, others_failed)
