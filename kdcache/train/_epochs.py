"""What each epoch trains on: one cached view per sample replayed with its cached targets, or fresh views.

* ``cached_epochs``: a cached student's epoch replays one cached view per sample (``epoch_views``) from its
  recorded parameters and streams the teacher's targets for it, in windows of cache blocks per rank;
  repeated views and views per image replay several of an image's cached views from one decode;
* ``fresh_view_epochs``: a teacher's (and the online reference student's) epoch draws a fresh view per sample
  from the (seed, key, epoch) generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch.utils.data import DataLoader

from kdcache._orphans import exit_with_parent
from kdcache._runtime import DistContext
from kdcache._views import FlatBatches, ReplayViews, ViewDraws, identity_collate
from kdcache.augment import ViewPipeline
from kdcache.cache import CacheStore
from kdcache.cache._teachers import common_done_units, open_teachers
from kdcache.train._losses import LossConfig
from kdcache.train._run import shard_batches
from kdcache.train._schedule import epoch_views
from kdcache.train._stream import (
    StreamedTargets,
    block_target_bytes,
    plan_epoch,
    store_window,
    truncate_plan,
    window_class_coverage,
)
from kdcache.train._targets import OnlineTargets, TeacherTargets
from kdcache.train._trainconfig import TrainConfig

__all__ = ["REPLAYS_WARN", "cached_epochs", "fresh_view_epochs", "make_loader"]


def make_loader(dataset, batches: list, cfg: TrainConfig, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, collate_fn=identity_collate,
                      pin_memory=pin, worker_init_fn=exit_with_parent())  # no orphans when the run is killed


# train-student warns from this many replays of each cached view (epochs / views) on
REPLAYS_WARN = 8


def cached_epochs(store: CacheStore, ds, pipeline: ViewPipeline, cfg: TrainConfig, ctx: DistContext, pin: bool,
                   log: Callable[[str], None] | None = None):
    """Each epoch: one cached view per sample (``epoch_views``), replayed, with its cached targets.

    The epoch runs in windows of blocks (``kdcache.train._stream``): each rank reads the replay
    parameters of its own blocks only and streams their targets a window ahead, holding at most
    ``target_memory_mb`` of them; when the rank's targets fit, one window covers them all.
    """
    distill = cfg.loss.distill != "none" or cfg.loss.features  # streams teacher targets
    r = cfg.repeated_views
    m = cfg.views_per_image * r  # slots: views replayed from each decode
    log = log or _quiet
    warned = []

    def epoch_data(epoch: int):
        # Reopen each epoch: views another process added (and marked done) become eligible.
        store = CacheStore.open(cfg.cache, mode="r", storage_options=cfg.storage_options)
        wanted = teacher_arrays(store, cfg.loss)  # each teacher's store and the target arrays read from it
        done = common_done_units(store, [t for t, _ in wanted.values()])
        # Epochs epoch..epoch+m-1 train on the views epoch_views picks for them, whatever m is; with repeated
        # views epoch e trains on the R views epoch_views picks for e*R .. e*R+R-1 (distinct within a cycle).
        first = epoch * r if r > 1 else epoch
        views = [epoch_views(done, epoch=first + j, seed=cfg.seed) for j in range(m)]
        layout = store.layout
        # only streamed targets need windows (every teacher's within one budget): a labels-only run shuffles
        # its whole share
        window = store_window(store, cfg.target_memory_mb, m, wanted) if distill else store.num_blocks
        plan = plan_epoch(len(ds), store.block_size, epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size,
                          window=window, rank=ctx.rank, world_size=ctx.world_size)
        if r > 1:  # the head of this rank's order: 1/R of its samples, each with R of its views in one batch
            plan = truncate_plan(plan, -(-sum(len(b) for b in plan.batches) // r), store.block_size,
                                 -(-cfg.batch_size // r))
        if not warned:
            warned.append(True)
            if r > store.num_views:
                log(f"warning: --repeated-views {r} over {store.num_views} cached view(s): an image repeats views "
                    "within an epoch; grow the cache with `kdcache dump-teacher --add-views N`")
            replays = cfg.epochs / max(1, store.num_views)
            if replays >= REPLAYS_WARN:
                log(f"warning: {cfg.epochs} epochs over {store.num_views} cached view(s) replay each view about "
                    f"{replays:.0f} times; in the CIFAR-10 accuracy table 10 replays a view gained nothing over "
                    "labels-only training and 20 lost 5.7 points (docs/benchmarks.md): grow the cache with "
                    "`kdcache dump-teacher --add-views N`")
            share, mixed = window_class_coverage(plan, np.asarray(ds.labels), seed=cfg.seed)
            if share < 0.5 * mixed:
                need = -(-2 * block_target_bytes(store, m, wanted) * store.num_blocks >> 20)
                log(f"warning: a target window holds {share:.0%} of the classes on average ({mixed:.0%} if the "
                    f"data were not ordered by class): batches mix few classes at a time. --target-memory-mb "
                    f"{cfg.target_memory_mb} fits {window} of {store.num_blocks} blocks per window; {need} holds "
                    "the epoch at once, or train from a top-k cache")
        replay = [store.read_views(v, names=layout.replay_names, blocks=plan.blocks) for v in views]
        targets = teacher_targets(wanted, views, plan, cfg, store.num_classes) if distill else None
        if m == 1:
            return make_loader(ReplayViews(ds, pipeline, replay[0]), plan.batches, cfg, pin), targets
        # Each worker item: one decode of a batch's images and m views of each
        if r > 1:  # repeated views: the R views in one batch, trained in the same step (as DeiT's RASampler does)
            return make_loader(ReplayViews(ds, pipeline, replay, merge=True), plan.batches, cfg, pin), targets
        # views per image: m batches, none holding two views of an image (FKD)
        return FlatBatches(make_loader(ReplayViews(ds, pipeline, replay), plan.batches, cfg, pin), m), targets

    return epoch_data


def teacher_arrays(store: CacheStore, loss: LossConfig) -> dict[str, tuple[CacheStore, list[str]]]:
    """For each of the cache's teachers the run learns from, its store and the target arrays it reads: the
    logits' targets of the logit teachers (``loss.teachers``), the embedding of the feature teacher."""
    logit = list(loss.teachers) if loss.distill != "none" else []
    names = logit + ([loss.feature_teacher] if loss.features and loss.feature_teacher not in logit else [])
    stores = open_teachers(store, names)
    return {n: (t, (t.layout.logit_target_names if n in logit else [])
                + ([a for a in t.layout.target_names if a not in t.layout.logit_target_names]
                   if loss.features and n == loss.feature_teacher else [])) for n, t in stores.items()}


def teacher_targets(wanted: dict[str, tuple[CacheStore, list[str]]], views, plan, cfg: TrainConfig,
                    num_classes: int):
    """The epoch's target source: one teacher's streamed targets as they are, or several joined."""
    streams = {n: StreamedTargets(t, views, names, plan) for n, (t, names) in wanted.items()}
    loss = cfg.loss
    if len(streams) == 1 and (loss.distill == "none" or len(loss.teachers) == 1):
        return next(iter(streams.values()))
    return TeacherTargets(streams, list(loss.teachers) if loss.distill != "none" else [], loss.ensemble_weights,
                          loss.feature_teacher if loss.features else None, num_classes=num_classes,
                          temperature=loss.temperature, fill=loss.topk_fill)


def fresh_view_epochs(ds, pipeline: ViewPipeline, targets: OnlineTargets | None, cfg: TrainConfig,
                       ctx: DistContext, pin: bool):
    """Each epoch: a fresh view per sample from the (seed, key, epoch) generator (teachers; online students,
    whose ``targets`` run the teacher on it)."""
    draws = ViewDraws(ds, pipeline, cfg.seed)

    def epoch_data(epoch: int):
        # The epoch number is the view index: fresh views every epoch, reproducible from the seed.
        batches = [[(i, epoch) for i in b] for b in
                   shard_batches(len(ds), epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size, ctx=ctx)]
        return make_loader(draws, batches, cfg, pin), targets

    return epoch_data


def _quiet(_msg: str) -> None:
    pass
