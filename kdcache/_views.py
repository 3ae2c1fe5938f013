"""Views of a dataset as torch ``Dataset`` objects: fresh draws, replays, evaluation views.

Both the dump and training use one :class:`~kdcache.augment.ViewPipeline`: the dump draws
parameters from the (seed, key, view) generator and records them, a student rebuilds the
view from the recorded parameters alone (:func:`build_views` is the one place that gathers a
batch's images, partners included, and applies the pipeline). Workers never touch the Zarr
store (the parent hands them plain numpy arrays), which keeps forked workers safe with
zarr's event loop. :func:`resolve_view_spec` is the one rule for a model's default views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from kdcache.augment import ViewParams, ViewPipeline, ViewSpec, derive_view_seed
from kdcache.augment._describe import summarize_spec
from kdcache.augment._presets import expand_preset
from kdcache.errors import ConfigError, DataError

if TYPE_CHECKING:
    from kdcache.models import ModelCfg

__all__ = ["ViewDraws", "RecordedViews", "ViewBatch", "BlockBatches", "FlatBatches", "merge_batches", "split_batch", "ReplayViews",
           "EvalViews", "identity_collate",
           "build_views", "resolve_view_spec", "resolve_view_sources", "describe_view_sources"]


def resolve_view_spec(model: ModelCfg, overrides: Mapping[str, Any] | None = None, *,
                      recorded: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None,
                      images=None) -> ViewSpec:
    """The model's expected input (size, normalisation, interpolation, eval crop), then the input settings
    ``recorded`` with its weights (the views a checkpoint was trained on), then the user's overrides.
    ``log``: told the input used and where each setting came from (:func:`describe_view_sources`, warning
    when the views are much larger than the ``images`` they are drawn from)."""
    spec, sources = resolve_view_sources(model, overrides, recorded=recorded)
    if log is not None:
        log(describe_view_sources(spec, sources, images=images))
    return spec


_INPUT_KEYS = ("size", "mean", "std", "interpolation", "crop_pct")


def resolve_view_sources(model: ModelCfg, overrides: Mapping[str, Any] | None = None, *,
                         recorded: Mapping[str, Any] | None = None, recorded_from: str = "the checkpoint"
                         ) -> tuple[ViewSpec, dict[str, str]]:
    """:func:`resolve_view_spec` and, for each input setting, where its value came from."""
    base: dict[str, Any] = {"size": model.input_size, "mean": tuple(model.mean), "std": tuple(model.std),
                            "interpolation": model.interpolation, "crop_pct": model.crop_pct}
    sources = dict.fromkeys(base, f"the {model.name or 'model'} architecture's default")
    for k in model.processor_input:  # an hf: model's image processor
        sources[k] = f"{model.name or 'the model'}'s preprocessor_config.json"
    for k, v in (recorded or {}).items():
        if k in _INPUT_KEYS and v is not None:
            base[k] = tuple(v) if isinstance(v, list) else v
            sources[k] = recorded_from
    preset, explicit, name = expand_preset(overrides)
    for k, v in preset.items():
        base[k] = v
        if k in sources:
            sources[k] = f"preset {name}"
    for k, v in explicit.items():
        if k in sources:  # an explicit value the weights record too is no contradiction: say both
            same = k in (recorded or {}) and sources[k] == recorded_from and _same(base[k], v)
            sources[k] = f"set explicitly, as in {recorded_from}" if same else "set explicitly"
        base[k] = v
    given = {k for k, v in {**(recorded or {}), **preset, **explicit}.items() if v is not None}
    unknown = [k for k in model.requires_input if k not in given]
    if unknown:
        flags = [f"--{k}" for k in unknown]
        flags_text = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"
        raise ConfigError(f"model {model.name!r} has no image processor (preprocessor_config.json) to tell its "
                          f"input: give {flags_text} (and --interpolation, else bilinear)")
    try:
        return ViewSpec(**base), sources
    except TypeError as e:
        raise ConfigError(f"invalid view option: {e}") from e


def _same(a: Any, b: Any) -> bool:
    a, b = (tuple(x) if isinstance(x, (list, tuple)) else x for x in (a, b))
    return a == b


def describe_view_sources(spec: ViewSpec, sources: Mapping[str, str], *, images=None) -> str:
    """One line: the view input settings used, grouped by where they came from; with the dataset the views are
    drawn from (``images``), a warning when the views are much larger than its images (:data:`UPSCALE_WARN`)."""
    text = _describe_sources(spec, sources)
    side = images.max_side() if images is not None else None
    if side and spec.size >= UPSCALE_WARN * side:
        how = sources["size"] if sources["size"].startswith("set") else f"from {sources['size']}"
        text += (f"\nwarning: {spec.size}-px views of {side}-px images (size {how}): each view "
                 f"costs about {(spec.size / side) ** 2:.0f}x the compute of a {side}-px one, for no new detail; "
                 f"unless the model needs that input (pretrained weights), --size {side} trains at the images' "
                 "own size")
    return text


# warn from views this many times the images' side (9x the pixels, so about 9x the compute)
UPSCALE_WARN = 3


def _describe_sources(spec: ViewSpec, sources: Mapping[str, str]) -> str:
    def fmt(k: str) -> str:
        v = getattr(spec, k)
        return f"{k} {' '.join(f'{x:.4g}' for x in v)}" if isinstance(v, tuple) else f"{k} {v}"

    groups: dict[str, list[str]] = {}
    for k in _INPUT_KEYS:
        groups.setdefault(sources[k], []).append(fmt(k))
    return ("view input: " + "; ".join(f"{', '.join(items)} (from {src})" if not src.startswith("set")
                                       else f"{', '.join(items)} ({src})" for src, items in groups.items())
            + f"\nview ops: {summarize_spec(spec)}")


def _images_for(dataset, indices: Sequence[int]) -> dict[int, torch.Tensor]:
    """Decode each distinct sample once, with the source's block reads."""
    uniq = sorted(set(int(i) for i in indices))
    return dict(zip(uniq, dataset.get_images(uniq)))


def build_views(dataset, pipeline: ViewPipeline, indices: Sequence[int], params: Sequence[ViewParams],
                images: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, 3, S, S) views of ``dataset[indices]`` under ``params``: each image (partners too) decoded once.

    ``images`` (sample index -> decoded image) lets several calls share one decode."""
    idx = [int(i) for i in indices]
    imgs = images if images is not None else _images_for(dataset, idx + [p.partner for p in params
                                                                           if p.partner >= 0])
    return torch.stack([_apply(dataset, pipeline, i, p, imgs) for i, p in zip(idx, params)])


def _apply(dataset, pipeline: ViewPipeline, i: int, p: ViewParams, imgs: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """One view; recorded parameters that no longer fit the image name the sample: the data changed."""
    try:
        return pipeline.apply(imgs[i], p, imgs[p.partner] if p.partner >= 0 else None)
    except DataError as e:
        if "does not fit" not in str(e):
            raise
        file = getattr(dataset, "sample_file", lambda _i: None)(i)
        partner = f"; mixed with sample {p.partner}" if p.partner >= 0 else ""
        raise DataError(f"sample {i} ({dataset.keys[i]!r}{f', {file}' if file else ''}{partner}) no "
                        f"longer fits its recorded view: {e}; the data changed since the dump (an image replaced or "
                        "resized): restore it, or dump the cache again") from None


@dataclass
class ViewBatch:
    indices: np.ndarray          # (B,) sample indices
    views: np.ndarray            # (B,) view indices
    seeds: np.ndarray            # (B,) derived view seeds
    params: list[ViewParams]
    images: torch.Tensor         # (B, 3, S, S) float32, normalised
    slot: int = 0                # replays with several views per decoded image: which of them (0..M-1)
    parts: tuple[int, ...] = ()  # a merged batch (repeated views): the sizes of its slots 0..M-1, in order

    def pin_memory(self) -> "ViewBatch":
        self.images = self.images.pin_memory()
        return self


class ViewDraws(Dataset):
    """Items are (sample index, view index) pairs; each returns a freshly drawn, recorded view."""

    def __init__(self, dataset, pipeline: ViewPipeline, seed: int):
        self.dataset = dataset
        self.pipeline = pipeline
        self.seed = int(seed)
        self.keys = list(dataset.keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def _draw(self, i: int, v: int) -> tuple[int, ViewParams]:
        vs = derive_view_seed(self.seed, self.keys[i], v)
        params = self.pipeline.make_params(vs, self.dataset.image_size(i), num_samples=len(self.dataset),
                                           size_of=self.dataset.image_size)
        return vs, params

    def __getitems__(self, pairs: Sequence[tuple[int, int]]) -> ViewBatch:
        drawn = [self._draw(int(i), int(v)) for i, v in pairs]
        params = [p for _, p in drawn]
        return ViewBatch(
            indices=np.array([i for i, _ in pairs], dtype=np.int64),
            views=np.array([v for _, v in pairs], dtype=np.int64),
            seeds=np.array([s for s, _ in drawn], dtype=np.int64),
            params=params,
            images=build_views(self.dataset, self.pipeline, [i for i, _ in pairs], params),
        )

    def __getitem__(self, pair: tuple[int, int]) -> ViewBatch:
        return self.__getitems__([pair])


class RecordedViews(ViewDraws):
    """Items are (sample index, view index) pairs, each rebuilt from the view's *recorded* parameters: a teacher
    added to a cache sees the views its main teacher saw. ``units`` maps (block, view) to that unit's replay
    arrays as read from the cache (by the parent: workers never touch the store)."""

    def __init__(self, dataset, pipeline: ViewPipeline, units: Mapping[tuple[int, int], Mapping[str, np.ndarray]],
                 block_size: int):
        super().__init__(dataset, pipeline, 0)
        self.units, self.block_size = dict(units), int(block_size)

    def _draw(self, i: int, v: int) -> tuple[int, ViewParams]:
        b = i // self.block_size
        return 0, self.pipeline.params_from_arrays(self.units[b, v], i - b * self.block_size)


def identity_collate(batch):
    return batch


class BlockBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (sample, view) pairs that decode each image once: all of a sample's pending views together.

    ``work`` lists (block, views) in order; a batch holds ``max(1, batch_size // len(views))`` consecutive
    samples of one block with every one of its pending views (sample-major), so a worker decodes each
    image once and draws all its views from that decode. Batches never straddle a block.
    """

    def __init__(self, work: Sequence[tuple[int, Sequence[int]]], bounds, batch_size: int):
        self.work = [(int(b), [int(v) for v in vs]) for b, vs in work]
        self.bounds = bounds
        self.batch_size = int(batch_size)

    def _samples_per_batch(self, views: Sequence[int]) -> int:
        return max(1, self.batch_size // max(1, len(views)))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b, vs in self.work:
            b0, b1 = self.bounds(b)
            step = self._samples_per_batch(vs)
            for s in range(b0, b1, step):
                yield [(i, v) for i in range(s, min(s + step, b1)) for v in vs]

    def __len__(self) -> int:
        n = 0
        for b, vs in self.work:
            b0, b1 = self.bounds(b)
            n += -(-(b1 - b0) // self._samples_per_batch(vs))
        return n


class ReplayViews(Dataset):
    """The student side: rebuild each sample's view from recorded parameters.

    ``arrays`` holds, for every sample, the recorded parameters of the view chosen for this
    epoch (as read from the cache in block reads); a batch of sample indices returns a
    :class:`ViewBatch`; the caller looks the targets up by index in the main process.

    With a sequence of M such mappings (M views per decoded image), a batch of sample indices
    decodes each image once and returns M :class:`ViewBatch` objects, ``slot`` j built from the
    j-th mapping: the same samples, one view each, so no batch holds two views of one image; with ``merge``
    one batch of all M (:func:`merge_batches`: repeated views, an image's views in the same step).
    """

    def __init__(self, dataset, pipeline: ViewPipeline,
                 arrays: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], *, merge: bool = False):
        self.dataset = dataset
        self.pipeline = pipeline
        self.merge = merge
        self.multi = not isinstance(arrays, Mapping)
        self.slots = [dict(a) for a in arrays] if self.multi else [dict(arrays)]
        self.arrays = self.slots[0]

    def __len__(self) -> int:
        return len(self.dataset)

    def params(self, i: int, slot: int = 0) -> ViewParams:
        return self.pipeline.params_from_arrays(self.slots[slot], int(i))

    def __getitems__(self, items: Sequence[int]) -> ViewBatch | list[ViewBatch]:
        idx = [int(i) for i in items]
        params = [[self.params(i, j) for i in idx] for j in range(len(self.slots))]
        images = _images_for(self.dataset, idx + [p.partner for ps in params for p in ps if p.partner >= 0])
        batches = []
        for j, (arrays, ps) in enumerate(zip(self.slots, params)):
            seeds = arrays.get("view_seed")
            batches.append(ViewBatch(
                indices=np.asarray(idx, dtype=np.int64), views=np.full(len(idx), -1, dtype=np.int64),
                seeds=np.asarray(seeds[idx]) if seeds is not None else np.zeros(len(idx), np.int64),
                params=ps, images=build_views(self.dataset, self.pipeline, idx, ps, images), slot=j))
        if self.merge:
            return merge_batches(batches)
        return batches if self.multi else batches[0]

    def __getitem__(self, i: int) -> ViewBatch | list[ViewBatch]:
        return self.__getitems__([i])


class FlatBatches:
    """A loader whose items are lists of batches (``ReplayViews`` with M views per image), batch by batch."""

    def __init__(self, loader, m: int):
        self.loader, self.m = loader, int(m)

    def __iter__(self) -> Iterator[ViewBatch]:
        for items in self.loader:
            yield from items

    def __len__(self) -> int:
        return len(self.loader) * self.m


def merge_batches(batches: Sequence[ViewBatch]) -> ViewBatch:
    """Slots 0..M-1 of the same samples as one batch, slot after slot; ``parts`` records their sizes."""
    return ViewBatch(indices=np.concatenate([b.indices for b in batches]),
                     views=np.concatenate([b.views for b in batches]),
                     seeds=np.concatenate([b.seeds for b in batches]),
                     params=[p for b in batches for p in b.params],
                     images=torch.cat([b.images for b in batches]), slot=-1,
                     parts=tuple(len(b.indices) for b in batches))


def split_batch(batch: ViewBatch) -> list[ViewBatch]:
    """A merged batch's slots (:func:`merge_batches` undone); a plain batch alone."""
    if not batch.parts:
        return [batch]
    cuts = np.cumsum((0, *batch.parts))
    return [ViewBatch(indices=batch.indices[a:b], views=batch.views[a:b], seeds=batch.seeds[a:b],
                      params=batch.params[a:b], images=batch.images[a:b], slot=j)
            for j, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


class EvalViews(Dataset):
    """Deterministic evaluation views: items are sample indices, batches are (images, labels)."""

    def __init__(self, dataset, pipeline: ViewPipeline):
        self.dataset = dataset
        self.pipeline = pipeline
        self.labels = np.asarray(dataset.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = _images_for(self.dataset, items)
        x = torch.stack([self.pipeline.eval_view(imgs[int(i)]) for i in items])
        return x, torch.as_tensor(self.labels[list(items)], dtype=torch.int64)

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]
