"""Which data (:class:`DataConfig`): torch-free, so configs and the CLI's options need no torch; opening it is
``kdcache.data._open``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdcache._config import ConfigBase
from kdcache._utils import check_subset_args
from kdcache.errors import ConfigError

if TYPE_CHECKING:
    from kdcache.data._dataset import ImageDataset

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Which data to use: the arguments of :func:`open_dataset`, as a round-trippable config."""

    source: str
    split: str = "train"
    limit: int | None = None
    subset_seed: int = 0
    val_fraction: float = 0.0   # > 0: hold out this fraction of `train` (per class, by key) as the `val` split

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.source:
            raise ConfigError(f"data source must be a non-empty string such as 'digits', got {self.source!r}")
        if not self.split:
            raise ConfigError(f"split must be a non-empty string such as 'train', got {self.split!r}")
        check_subset_args(self.limit, self.subset_seed, ConfigError)

    def open(self, split: str | None = None) -> ImageDataset:
        """Open this config's data; ``split`` overrides the configured split (limit still applies)."""
        from kdcache.data._open import open_dataset

        return open_dataset(self.source, self.split if split is None else split,
                            limit=self.limit, subset_seed=self.subset_seed, val_fraction=self.val_fraction)
