"""Opening a dataset from its source spec: :func:`open_dataset` (what :meth:`DataConfig.open` calls).

A source spec is one string, so it fits a CLI flag, a config file and a cache's attributes:
``digits``, ``hdf5:PATH``, ``folder:PATH``, ``cifar10:ROOT``, ``hfds:PATH_OR_NAME`` or ``wds:PATTERN``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kdcache._utils import check_subset_args
from kdcache.data._dataset import ImageDataset
from kdcache.data._subset import held_out, stratified_subset
from kdcache.errors import DataError

__all__ = ["SOURCE_SCHEMES", "open_dataset", "parse_source"]

SOURCE_SCHEMES = ("digits", "hdf5:PATH", "folder:PATH", "cifar10:ROOT", "hfds:PATH_OR_NAME", "wds:PATTERN")


def _open_digits(arg: str, split: str, source: str) -> ImageDataset:
    from kdcache.data._digits import DigitsDataset

    return DigitsDataset(split=split, source=source)


def _open_hdf5(arg: str, split: str, source: str) -> ImageDataset:
    from kdcache.data._hdf5 import HDF5Dataset

    return HDF5Dataset(path=arg, split=split, source=source)


def _open_folder(arg: str, split: str, source: str, val_fraction: float = 0.0) -> ImageDataset:
    from kdcache.data._folder import FolderDataset

    return FolderDataset(path=arg, split=split, source=source, val_fraction=val_fraction)


def _open_cifar10(arg: str, split: str, source: str) -> ImageDataset:
    from kdcache.data._cifar import CIFAR10Dataset

    return CIFAR10Dataset(root=arg, split=split, source=source)


def _open_hfds(arg: str, split: str, source: str) -> ImageDataset:
    from kdcache.data._hfds import HFDataset

    return HFDataset(arg=arg, split=split, source=source)


def _open_wds(arg: str, split: str, source: str) -> ImageDataset:
    from kdcache.data._wds import WebDataset

    return WebDataset(pattern=arg, split=split, source=source)


_OPENERS: dict[str, Callable[..., ImageDataset]] = {
    "digits": _open_digits,
    "hdf5": _open_hdf5,
    "folder": _open_folder,
    "cifar10": _open_cifar10,
    "hfds": _open_hfds,
    "wds": _open_wds,
}


def parse_source(source: str) -> tuple[str, str]:
    """Split a source spec into ``(scheme, argument)``; ``digits`` has an empty argument."""
    expected = f"expected one of: {', '.join(SOURCE_SCHEMES)}"
    if not isinstance(source, str):
        raise DataError(f"data source must be a string, got {type(source).__name__} {source!r}; {expected}")
    scheme, sep, arg = source.partition(":")
    if scheme == "digits":
        if arg:
            raise DataError(f"data source {source!r}: 'digits' takes no path; use plain 'digits'")
        return "digits", ""
    if not sep or scheme not in _OPENERS:
        raise DataError(f"unknown data source {source!r}; {expected}")
    if not arg:
        raise DataError(f"data source {source!r} needs a path after '{scheme}:'")
    return scheme, arg


def open_dataset(source: str, split: str = "train", *, limit: int | None = None,
                 subset_seed: int = 0, val_fraction: float = 0.0) -> ImageDataset:
    """Open ``split`` of ``source``, optionally a seeded stratified subset of ``limit`` samples.

    The subset takes from every class in proportion to its size (storage is often ordered by
    class) and keeps the chosen samples in their original order and with their original keys.
    ``limit >= len`` keeps everything. ``val_fraction`` > 0 divides the ``train`` split into ``train`` and a
    held-out ``val`` split, per class and by key (:func:`~kdcache.data._subset.held_out`): model selection
    then never sees the test split. Other splits are unaffected; ``limit`` applies after the division.
    """
    check_subset_args(limit, subset_seed, DataError)
    if not isinstance(split, str) or not split:
        raise DataError(f"split must be a non-empty string such as 'train', got {split!r}")
    scheme, arg = parse_source(source)
    if val_fraction and scheme == "folder":  # a folder without split folders is divided as it is listed
        ds = _OPENERS[scheme](arg, split, source, val_fraction=float(val_fraction))
    elif val_fraction and split in ("train", "val"):
        ds = _hold_out(_OPENERS[scheme](arg, "train", source), split, float(val_fraction))
    else:
        ds = _OPENERS[scheme](arg, split, source)
    if limit is not None and int(limit) < len(ds):
        ds = ds.select(stratified_subset(ds.labels, ds.keys, int(limit), int(subset_seed)))
    return ds


def _hold_out(ds: ImageDataset, split: str, fraction: float) -> ImageDataset:
    """The ``train`` (kept) or ``val`` (held-out) part of a train split divided by ``val_fraction``."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"`val_fraction` must be in (0, 1), got {fraction!r}")
    held = held_out(ds.keys, ds.labels, fraction)
    part = ds.select(np.flatnonzero(held == (split == "val")))
    part.split, part.val_fraction = split, fraction
    return part
