"""The held-out data of a run: the split that selects ``best.pt`` and the split reported once at the end.

Selecting a checkpoint on the test split and then reporting its test accuracy reports an optimistic
number. So a run selects on a validation split held out from the training data (``val_split``; by
default the ``val`` part when ``data.val_fraction`` > 0, else nothing: ``best.pt`` is then the last
epoch) and evaluates the selected checkpoint once on ``test_split`` after the last epoch (by default the
data's ``test`` split when it has one), writing ``test.json`` into the run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import DataLoader

from kdcache._orphans import exit_with_parent
from kdcache._views import EvalViews, identity_collate
from kdcache.augment import ViewPipeline
from kdcache.data import DataConfig
from kdcache.errors import ConfigError, DataError

__all__ = ["TEST_FILE", "checkpoint_data", "eval_loader", "resolve_heldout"]

TEST_FILE = "test.json"
AUTO = "auto"


def _has_split(data: DataConfig, split: str) -> bool:
    try:
        data.open(split)
    except DataError:
        return False
    return True


def resolve_heldout(data: DataConfig, val_split: str | None, test_split: str | None,
                    log: Callable[[str], None]) -> tuple[str | None, str | None]:
    """(validation split, test split) of a run, each a split name or None; says what it chose when it matters."""
    val = ("val" if data.val_fraction else None) if val_split == AUTO else (val_split or None)
    if test_split == AUTO:
        test = "test" if data.split != "test" and _has_split(data, "test") else None
    else:
        test = test_split or None
    if val is None and val_split == AUTO:  # said when defaulted, not when asked for
        log("no validation split: best.pt is the last epoch (hold one out of the training data with "
            "`val_fraction`, or name one with `val_split`)")
    elif val is not None and val == test:
        log(f"warning: best.pt is selected on the test split {test!r}: its test top-1 is optimistic; hold a "
            "validation split out of the training data with `val_fraction` instead")
    if val is not None and val == data.split:
        log(f"warning: the validation split {val!r} is the training split: best.pt is selected on training data")
    return val, test


def eval_loader(data: DataConfig, split: str | None, pipeline: ViewPipeline, *, batch_size: int, workers: int,
                pin: bool) -> DataLoader | None:
    """Evaluation views of ``split`` of ``data`` (None: no loader)."""
    if not split:
        return None
    ds = data.open(split).preload()
    return DataLoader(EvalViews(ds, pipeline), batch_size=max(batch_size, 256), shuffle=False, num_workers=workers,
                      collate_fn=identity_collate, pin_memory=pin, worker_init_fn=exit_with_parent())


def checkpoint_data(path: str, config: Mapping[str, Any] | None,
                    given: DataConfig | Mapping[str, Any] | None) -> DataConfig:
    """The data a checkpoint is evaluated on: what its run recorded (its `limit` included, as the run's own
    test.json), on the run's test split, with the options ``given`` (None entries: unset) taking precedence.
    Another source starts from the given options alone."""
    if isinstance(given, DataConfig):
        return given
    given = {k: v for k, v in (given or {}).items() if v is not None}
    config = config or {}
    recorded = config.get("data")
    if not recorded or ("source" in given and given["source"] != recorded.get("source")):
        if "source" not in given:
            raise ConfigError(f"{path} records no data: name the data to evaluate on with `data`")
        return DataConfig.from_dict({"split": "test", **given})
    if "split" not in given:
        test = config.get("test_split", "test")  # older checkpoints record no test split: the data's `test`
        if not test:
            raise ConfigError(f"{path}'s run had no test split; name the split to evaluate on with `split`")
        given["split"] = "test" if test == AUTO else test
    return DataConfig.from_dict({**recorded, **given})
