"""Datasets: one :class:`ImageDataset` interface over ``digits``, ``hdf5:``, ``folder:`` and ``cifar10:`` data.

Open data with :func:`open_dataset` (or a :class:`DataConfig`); every dataset has stable
string keys per sample, int64 labels, uint8 RGB (3, H, W) images and a manifest hash that
identifies its index. See ``data/README.md`` for the supported layouts.
"""

from kdcache.data._dataset import ImageDataset
from kdcache.data._open import SOURCE_SCHEMES, DataConfig, open_dataset, parse_source
from kdcache.data._subset import stratified_subset

__all__ = [
    "SOURCE_SCHEMES",
    "DataConfig",
    "ImageDataset",
    "open_dataset",
    "parse_source",
    "stratified_subset",
]
