"""What a dump is asked to do (``DumpConfig``, recorded in the cache) and what it reports (``DumpSummary``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kdcache._config import ConfigBase
from kdcache._teacher import TeacherSpec
from kdcache._utils import recordable_config
from kdcache.cache import CacheStore
from kdcache.cache._info import label_agreement
from kdcache.data import DataConfig

__all__ = ["DumpConfig", "DumpSummary", "summarize"]


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
    shard: str | None = None          # "I/N": only blocks b with b % N == I (independent jobs; see _lock.py)

    def recorded(self) -> dict[str, Any]:
        """The configuration recorded in the cache: the shard is left out (any shard may create the store,
        and the store must be the same whichever did), and so are credentials."""
        d = recordable_config(self)  # storage_options credentials redacted
        d.pop("shard", None)
        return d


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


def summarize(path: str, storage_options: dict[str, Any] | None, *, units: int, views: int, seconds: float,
              rank: int = 0) -> DumpSummary:
    """The summary of a finished dump (or added teacher) into the store at ``path``: ``units`` and ``views``
    computed in ``seconds`` by all ranks, and what the store now holds."""
    store = CacheStore.open(path, mode="r", storage_options=storage_options)
    done = store.done()
    return DumpSummary(
        out=path, num_samples=store.num_samples, num_views=store.num_views, num_classes=store.num_classes,
        targets=str(store.target_mode), units_computed=int(units), views_computed=int(views), seconds=seconds,
        images_per_second=views / seconds if seconds > 0 and views else 0.0,
        label_agreement=label_agreement(store, done), bytes_on_disk=store.nbytes_on_disk(),
        done_fraction=float(done.mean()), fingerprint=store.identity.fingerprint, rank=rank)
