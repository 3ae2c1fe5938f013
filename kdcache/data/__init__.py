"""Datasets: one :class:`ImageDataset` interface over ``digits``, ``hdf5:``, ``folder:`` and ``cifar10:`` data.

Open data with :func:`open_dataset` (or a :class:`DataConfig`); every dataset has stable
string keys per sample, int64 labels, uint8 RGB (3, H, W) images and a manifest hash that
identifies its index. See ``data/README.md`` for the supported layouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache._lazy import lazy_names

if TYPE_CHECKING:
    from kdcache.data._config import DataConfig
    from kdcache.data._dataset import ImageDataset
    from kdcache.data._open import SOURCE_SCHEMES, open_dataset, parse_source
    from kdcache.data._subset import stratified_subset

# name -> the module that defines it, imported on first access (DataConfig needs no torch; the datasets do)
_LAZY = {"SOURCE_SCHEMES": "._open", "DataConfig": "._config", "ImageDataset": "._dataset", "open_dataset": "._open",
         "parse_source": "._open", "stratified_subset": "._subset"}

__all__ = [
    "SOURCE_SCHEMES",
    "DataConfig",
    "ImageDataset",
    "open_dataset",
    "parse_source",
    "stratified_subset",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
