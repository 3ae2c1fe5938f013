"""The public way to train from a cache in your own loop: :func:`open_cache` and :class:`CacheDataset`.

:class:`CacheDataset` is a map-style torch ``Dataset`` that yields, per sample, the epoch's
replayed view, its label (mixed for MixUp/CutMix views) and the teacher's cached targets for
that exact view. It is built from the pieces ``train-student`` uses, so it picks the same
views and yields the same pixels and targets:

* :meth:`CacheDataset.set_epoch` picks each block's view with
  :func:`~kdcache.train._schedule.epoch_views` and reads the epoch's arrays with
  :meth:`~kdcache.cache.CacheStore.read_views` (one chunk read per block and array), in the
  calling (main) process;
* items are rebuilt by :class:`~kdcache._views.ReplayViews` from those numpy arrays; their labels
  come from :func:`~kdcache.train._loop.label_targets` and their targets from
  :class:`~kdcache.train._targets.CachedTargets`, as in the training loop.

DataLoader workers therefore only see numpy arrays and the dataset's images: they never touch
the Zarr store (zarr's event loop and forked workers do not mix), and no item reads the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcache._views import ReplayViews
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.cache._teachers import open_teachers
from kdcache.data import DataConfig, ImageDataset
from kdcache.errors import CacheMismatchError, ConfigError
from kdcache.train._loop import label_targets
from kdcache.train._schedule import read_epoch
from kdcache.train._targets import CachedTargets

__all__ = ["open_cache", "CacheDataset"]

_CPU = torch.device("cpu")


def open_cache(path: str, *, storage_options: Mapping[str, Any] | None = None) -> CacheStore:
    """Open the teacher cache at ``path`` (a directory or an fsspec URL) read-only.

    The returned :class:`~kdcache.cache.CacheStore` tells ``num_samples``, ``num_views``,
    ``num_classes``, ``target_mode`` and the cache's ``identity``; pass it (or the path) to
    :class:`CacheDataset`. Raises :class:`~kdcache.errors.CacheNotFoundError` when nothing
    (or no kdcache cache) is there.
    """
    return CacheStore.open(str(path), mode="r", storage_options=storage_options)


class CacheDataset(Dataset):
    """A torch ``Dataset`` of a cache's replayed views, labels and teacher targets, epoch by epoch.

    Args:
        cache: a path (or URL) of a cache, or a store from :func:`open_cache`.
        data: the images the cache was made from: an :class:`~kdcache.data.ImageDataset`, a
            :class:`~kdcache.data.DataConfig`, a source string such as ``"hdf5:PATH"`` (the cache's
            split is used) or None for the data the cache records in its dump configuration.
            Data whose sample keys and labels differ from the cache's is refused
            (:class:`~kdcache.errors.CacheMismatchError`).
        seed: the run seed that orders each block's views over epochs — the same ``seed`` as
            ``train-student``'s, so both pick the same view for every sample and epoch.
        epoch: the epoch to start at (:meth:`set_epoch` changes it).
        targets: False leaves the teacher's targets out (a labels-only baseline reads less).
        views_per_image: M > 1 is ``train-student --views-per-image M`` (FKD's trick): each item decodes
            its image once and yields the cached views of M consecutive epochs, ``set_epoch(e)`` (``e`` a
            multiple of M) covering epochs ``e .. e + M − 1``.
        storage_options: fsspec options for a cache given by URL.
        teachers: names of the cache's teachers (``"main"``, the dump's, and those added with ``kdcache
            add-teacher``) whose targets each item carries, by name: ``item["targets"][name]``. The epoch's
            views are then those every named teacher covers. None (the default): the main teacher's targets,
            as ``item["targets"]`` itself.

    Item ``i`` is a dict that :func:`torch.utils.data.default_collate` batches:

    * ``"image"``: float32 (3, S, S), the view the teacher saw, normalised;
    * ``"label"``: float32 (C,), the ground-truth distribution: one-hot, or
      ``lam · onehot(y) + (1 − lam) · onehot(y_partner)`` for a MixUp/CutMix view;
    * ``"targets"``: the teacher's targets for this view, float32/int64 tensors by name —
      ``logits`` (C,) for a ``full`` cache, or ``topk_values``/``topk_indices`` (K,) and
      ``topk_tail_lse`` () for ``topk:K`` (format 2: relative to the top logit, so ``topk_values[0] == 0``;
      see docs/cache-format.md); ``argmax`` () in both (absent when ``targets=False``);
    * ``"index"``: the sample index; ``"view"``: the cached view index it replays.

    With ``views_per_image`` M > 1, ``image``, ``label``, every target and ``view`` gain a leading
    axis of M (slot j: epoch ``e + j``'s view), so a collated batch is (B, M, ...). ``train-student``
    steps on the slots one after the other (``batch["image"][:, j]`` for j in 0..M−1); flattening
    them (``.flatten(0, 1)``) puts all M views of an image in one batch instead.

    A batch's ``image``, ``label`` and ``targets`` go straight into a model and
    :class:`~kdcache.train._losses.DistillationLoss`. Call :meth:`set_epoch` before each epoch, as
    with a ``DistributedSampler``, and create the DataLoader's iterator afterwards. A worker that
    still holds an earlier epoch (``persistent_workers=True`` keeps the dataset copy a worker started
    with) raises :class:`~kdcache.errors.ConfigError` rather than replaying that epoch's views again.
    Any sampler, batch size and worker count works.
    """

    def __init__(self, cache: str | CacheStore, data: ImageDataset | DataConfig | str | None = None, *,
                 seed: int = 0, epoch: int = 0, targets: bool = True,
                 storage_options: Mapping[str, Any] | None = None, views_per_image: int = 1,
                 teachers: Sequence[str] | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        m = views_per_image
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ConfigError(f"views_per_image must be an integer >= 1, got {m!r}")
        self.views_per_image = int(m)
        store = cache if isinstance(cache, CacheStore) else open_cache(cache, storage_options=storage_options)
        self.path = store.path
        self.fingerprint = store.identity.fingerprint
        self.storage_options = dict(storage_options) if storage_options else None
        self.seed = int(seed)
        self.with_targets = bool(targets)
        self.teachers = None if teachers is None else list(teachers)
        if isinstance(teachers, str):
            raise ConfigError(f"teachers must be a list of names, got the string {teachers!r}")
        if self.teachers is not None:
            open_teachers(store, self.teachers)  # each exists and belongs to this cache (one line otherwise)
        self.dataset = _open_data(store, data)
        store.check_dataset(self.dataset)
        self.num_classes = store.num_classes
        self.block_size = store.block_size
        self.target_mode = store.target_mode
        self.pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
        self.labels = np.asarray(self.dataset.labels, dtype=np.int64)
        self.epoch = -1
        self.views: np.ndarray = np.zeros(0, dtype=np.int64)
        self._replay: ReplayViews  # the epoch's replay arrays (numpy), set by set_epoch
        self._teacher: CachedTargets | None = None  # one slot per view of an image
        # the epoch set last, shared with the DataLoader workers' copies of this dataset (fork or spawn)
        self._latest = torch.full((1,), -1, dtype=torch.int64).share_memory_()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch``'s view of every sample: the view ``train-student`` trains on in that epoch.

        Runs in the calling process: the cache is reopened (views another process has finished
        since become eligible, as in ``train-student``) and read once per block and array.
        Setting the current epoch again reads nothing.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
        m = self.views_per_image
        if epoch % m:
            raise ConfigError(f"with views_per_image {m}, set_epoch({epoch}) would split a pass: each pass covers "
                              f"{m} epochs, so set epochs 0, {m}, {2 * m}, ...")
        if epoch == self.epoch:
            return
        store = open_cache(self.path, storage_options=self.storage_options)
        if store.identity.fingerprint != self.fingerprint:
            raise CacheMismatchError(f"{self.path} was replaced by another cache since this dataset "
                                     "opened it; create a new CacheDataset")
        # train-student's passes: epochs epoch..epoch+m-1, each with its own view per block
        stores = open_teachers(store, self.teachers) if self.teachers is not None else None
        reads = [read_epoch(store, epoch=int(epoch) + j, seed=self.seed, targets=self.with_targets, teachers=stores)
                 for j in range(m)]
        self._replay = ReplayViews(self.dataset, self.pipeline, [arrays for _, arrays, _ in reads])
        if stores is None:
            self._teacher = CachedTargets([t for _, _, t in reads]) if reads[0][2] else None
        else:  # one source per teacher, by name
            self._teacher = ({n: CachedTargets([t[n] for _, _, t in reads]) for n in stores}
                             if self.with_targets else None)
        self._slot_views = np.stack([v for v, _, _ in reads])  # (M, num_blocks)
        self.views = self._slot_views[0] if m == 1 else self._slot_views  # (num_blocks,), or (M, num_blocks)
        self.epoch = int(epoch)
        self._latest[0] = self.epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items at ``indices``, built together (each image decoded once, with block reads)."""
        if int(self._latest[0]) != self.epoch:
            raise ConfigError(f"this DataLoader worker holds epoch {self.epoch}'s views but set_epoch("
                              f"{int(self._latest[0])}) was called since: with persistent_workers=True workers "
                              "keep the epoch they started with; use persistent_workers=False")
        slots = self._replay.__getitems__([int(i) for i in indices])  # each image decoded once for all M
        images, labels, teachers = [], [], []
        for batch in slots:
            images.append(batch.images)
            labels.append(label_targets(batch, self.labels, self.num_classes, _CPU))
            if isinstance(self._teacher, dict):
                teachers.append({n: _typed(src(batch, batch.images)) for n, src in self._teacher.items()})
            else:
                teachers.append(_typed(self._teacher(batch, batch.images)) if self._teacher is not None else {})
        one = self.views_per_image == 1

        def pick(rows: list[torch.Tensor], row: int) -> torch.Tensor:
            return rows[0][row] if one else torch.stack([r[row] for r in rows])

        items = []
        for row, i in enumerate(slots[0].indices.tolist()):
            views = self._slot_views[:, i // self.block_size]
            item: dict[str, Any] = {"image": pick(images, row), "label": pick(labels, row), "index": i,
                                    "view": int(views[0]) if one else torch.as_tensor(views)}
            if isinstance(self._teacher, dict):
                item["targets"] = {n: {k: pick([t[n][k] for t in teachers], row) for k in teachers[0][n]}
                                   for n in self._teacher}
            elif self._teacher is not None:
                item["targets"] = {k: pick([t[k] for t in teachers], row) for k in teachers[0]}
            items.append(item)
        return items

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __repr__(self) -> str:
        m = f", views_per_image={self.views_per_image}" if self.views_per_image > 1 else ""
        return (f"CacheDataset({self.path!r}, samples={len(self)}, classes={self.num_classes}, "
                f"targets={self.target_mode if self.with_targets else None}, epoch={self.epoch}{m})")


def _typed(targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v.long() for k, v in targets.items()}


def _open_data(store: CacheStore, data: ImageDataset | DataConfig | str | None) -> ImageDataset:
    if isinstance(data, ImageDataset):
        return data
    if data is None:
        recorded = (store.attrs.get("config") or {}).get("data")
        if not recorded:
            raise ConfigError(f"{store.path} does not record its data source; pass `data`")
        data = DataConfig.from_dict(recorded)
    elif isinstance(data, str):
        data = DataConfig(source=data, split=str(store.identity.dataset.get("split", "train")))
    elif not isinstance(data, DataConfig):
        raise ConfigError(f"data must be an ImageDataset, a DataConfig, a source string or None, "
                          f"got {type(data).__name__}")
    # Resident before DataLoader workers fork, so they share one copy (as train-student does).
    return data.open().preload()
