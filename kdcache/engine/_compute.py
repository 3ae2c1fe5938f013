"""Computing a cache's units: a model over blocks of views, each finished unit checked and written.

The part ``dump-teacher`` (:mod:`kdcache.engine._dump`, views drawn afresh) and ``add-teacher``
(:mod:`kdcache.engine._add_teacher`, views replayed from the cache) share. Work is a list of blocks, each with
its pending views; a batch holds a few samples with all of those views, so each image is decoded once. When a
block's views are all computed, each of its units (block × view) is refused if non-finite, encoded, and handed
to the background writer (:mod:`kdcache.engine._writer`), which marks it done after its arrays are written.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache._orphans import exit_with_parent
from kdcache._runtime import DistContext, autocast, select_device, unwrap_worker_error
from kdcache._teacher import target_forward
from kdcache._views import BlockBatches, ViewBatch, identity_collate
from kdcache.augment import ViewParams, ViewPipeline
from kdcache.cache import CacheStore
from kdcache.cache._layout import VIEW_SEED, UnitLayout
from kdcache.engine._dumpconfig import DumpSummary, summarize
from kdcache.engine._writer import _Writer
from kdcache.errors import CacheError, KdcacheError, TeacherOutputError

__all__ = ["block_views", "block_work", "compute_work", "work_summary"]


def block_work(units: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """Pending units grouped by block (block order; views ascending): the dump's unit of decoding."""
    by_block: dict[int, list[int]] = {}
    for b, v in units:
        by_block.setdefault(b, []).append(v)
    return [(b, sorted(vs)) for b, vs in sorted(by_block.items())]


def _unit_arrays(layout: UnitLayout, logits: torch.Tensor | None, embedding: torch.Tensor | None,
                 params: list[ViewParams], seeds: np.ndarray, pipeline: ViewPipeline, where: str
                 ) -> dict[str, np.ndarray]:
    """Targets + recorded parameters of one unit; refuses non-finite teacher outputs."""
    for what, x in (("logits", logits), ("embeddings", embedding)):
        bad = (~torch.isfinite(x)).any(dim=1) if x is not None else torch.zeros(1, dtype=torch.bool)
        if bool(bad.any()):
            raise TeacherOutputError(f"the teacher produced NaN/Inf {what} for {int(bad.sum())} views of {where}; "
                                     "nothing of it was marked done (check the weights and `amp`)")
    if logits is not None and not bool(torch.isfinite(logits.to(torch.float16)).all()):
        raise TeacherOutputError(f"teacher logits of {where} overflow float16 (|x| > 65504)")
    if embedding is not None and layout.mode.embedding == "float16" and \
            not bool(torch.isfinite(embedding.to(torch.float16)).all()):
        raise TeacherOutputError(f"teacher embeddings of {where} overflow float16 (|x| > 65504); store them as "
                                 "int8 (targets '...+pooled:int8')")
    out = layout.encode_targets(logits, embedding)
    # an added teacher's layout holds no parameters: they are the main cache's
    out.update({k: v for k, v in pipeline.params_to_arrays(params).items() if k in layout.specs})
    if VIEW_SEED in layout.specs:  # derivable from (seed, key, view): stored by format 1 only
        out[VIEW_SEED] = seeds
    return out


def _run_blocks(model, loader, work: list[tuple[int, list[int]]], store: CacheStore,
                pipeline: ViewPipeline, device: torch.device, cfg, writer: _Writer) -> None:
    """Teacher forward over the loader's batches (all pending views of a few samples each); when a block's
    views are all computed, each of its units is checked and handed to the writer. ``cfg``: the command's
    config (its ``amp``)."""
    mode = store.layout.mode
    forward = target_forward(model, logits=mode.has_logits, embedding=bool(mode.embedding))
    for block, views in work:
        b0, b1 = store.block_bounds(block)
        need, got = (b1 - b0) * len(views), 0
        logits: dict[int, list[torch.Tensor]] = {v: [] for v in views}
        embeddings: dict[int, list[torch.Tensor]] = {v: [] for v in views}
        params: dict[int, list[ViewParams]] = {v: [] for v in views}
        seeds: dict[int, list[np.ndarray]] = {v: [] for v in views}
        while got < need:
            try:
                batch: ViewBatch = next(loader)
            except KdcacheError as e:  # a worker's error: the one line --workers 0 gives
                raise unwrap_worker_error(e) from None
            with torch.inference_mode(), autocast(device, cfg.amp):
                out, emb = forward(batch.images.to(device, non_blocking=True))
                out = out.float().cpu() if out is not None else None
                emb = emb.float().cpu() if emb is not None else None
            for v in views:  # the batch is sample-major: each view's rows stay in sample order
                rows = np.flatnonzero(batch.views == v)
                if out is not None:
                    logits[v].append(out[torch.from_numpy(rows)])
                if emb is not None:
                    embeddings[v].append(emb[torch.from_numpy(rows)])
                params[v].extend(batch.params[r] for r in rows)
                seeds[v].append(batch.seeds[rows])
            got += len(batch.indices)
        units = []
        for v in views:
            where = f"block {block} (samples {b0}-{b1 - 1}), view {v}"
            arrays = _unit_arrays(store.layout, torch.cat(logits[v]) if logits[v] else None,
                                  torch.cat(embeddings[v]) if embeddings[v] else None, params[v],
                                  np.concatenate(seeds[v]), pipeline, where)
            units.append((v, arrays, where))
        writer.submit(block, units)


def block_views(store: CacheStore, work: list[tuple[int, list[int]]]) -> int:
    """How many views ``work`` holds: each block's samples times its pending views."""
    return sum((store.block_bounds(b)[1] - store.block_bounds(b)[0]) * len(vs) for b, vs in work)


def compute_work(ctx: DistContext, store: CacheStore, path: str, model, views, work: list[tuple[int, list[int]]],
                 pipeline: ViewPipeline, cfg, bar) -> tuple[BaseException | None, bool]:
    """Run ``model`` over this rank's ``work`` (blocks of ``views``, a dataset of view batches) and write each
    finished unit through the background writer: the computing part that ``dump-teacher`` and ``add-teacher``
    share. Returns this rank's failure (None on success) and whether any rank failed; every rank calls it, so a
    failed rank never leaves the others waiting at a barrier. ``cfg``: the command's config (``device``,
    ``workers``, ``batch_size``, ``amp``)."""
    failure: BaseException | None = None
    writer = _Writer(store, path, bar)
    try:
        try:
            # in the try: a failure here computed nothing, and the caller removes a store it just made
            device = select_device(cfg.device, local_rank=ctx.local_rank)
            loader = DataLoader(views, batch_sampler=BlockBatches(work, store.block_bounds, cfg.batch_size),
                                num_workers=cfg.workers, collate_fn=identity_collate,
                                pin_memory=device.type == "cuda",
                                worker_init_fn=exit_with_parent())  # no orphans when the command is killed
            _run_blocks(model.to(device), iter(loader), work, store, pipeline, device, cfg, writer)
        finally:
            writer.close(raise_error=False)
        writer._raise()
    except Exception as e:  # noqa: BLE001 - the caller raises it, after every rank has heard of it
        failure = e
    return failure, ctx.any(failure is not None)


def work_summary(ctx: DistContext, store: CacheStore, path: str, storage_options, all_work: list[tuple[int, list[int]]],
                 bar, t0: float, others_failed: bool) -> DumpSummary:
    """After :func:`compute_work` succeeded on this rank: refuse if another rank failed, else wait for every rank
    and summarise the store (``all_work``: every rank's blocks; ``t0``: when computing began)."""
    if others_failed:
        raise CacheError("another rank failed (see its message); units written so far are intact, rerun to resume")
    bar.close()
    seconds = time.perf_counter() - t0
    ctx.barrier()
    return summarize(path, storage_options, units=sum(len(vs) for _, vs in all_work),
                     views=block_views(store, all_work), seconds=seconds, rank=ctx.rank)
