"""View options given against an existing cache: what they state, and where they disagree with it.

A cache's views are fixed when it is dumped; options given later (``train-student --cache``,
``dump-teacher --add-views`` or a resume, ``verify``) cannot change them, so each must agree with the
cache or be refused by name. A preset is a whole recipe: besides its own settings it states the default of
every view-op setting it does not set (``--preset cifar`` says "no RandAugment, no erasing, no mixing"), so
``--preset cifar`` on a ``deit-cifar`` cache is refused for ``auto_augment``, ``reprob``, ``mix`` and the
rest. The model's input settings (size, normalisation, interpolation, eval crop) are not part of any
recipe: a preset leaves them unstated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdcache.augment._presets import expand_preset
from kdcache.augment._spec import EVAL_ONLY_FIELDS, ViewSpec

__all__ = ["stated_settings", "view_conflicts", "INPUT_FIELDS", "EVAL_ONLY_FIELDS"]

INPUT_FIELDS = ("size", "mean", "std", "interpolation", "crop_pct")  # the model's, never a preset's default


def stated_settings(overrides: Mapping[str, Any] | None) -> dict[str, tuple[Any, str]]:
    """Every :class:`ViewSpec` setting the options state -> (value, the option that states it)."""
    preset, explicit, name = expand_preset(overrides)
    out: dict[str, tuple[Any, str]] = {}
    if name is not None:
        for k, v in ViewSpec().to_dict().items():
            if k not in INPUT_FIELDS and k not in EVAL_ONLY_FIELDS:
                out[k] = (v, f"`preset` {name}, its default")
        for k, v in preset.items():
            out[k] = (list(v) if isinstance(v, tuple) else v, f"`preset` {name}")
    for k, v in explicit.items():
        out[k] = (list(v) if isinstance(v, tuple) else v, f"`{k}`")
    return out


def view_conflicts(overrides: Mapping[str, Any] | None, have: ViewSpec, *, ignore: tuple[str, ...] = ()
                   ) -> list[str]:
    """``"setting VALUE (asked by OPTION) != VALUE (cache)"`` for each stated setting the cache does not have
    (``ignore``: settings that do not matter here, e.g. the eval-only ones to a dump)."""
    cache = have.to_dict()
    out = []
    for k, (v, src) in stated_settings(overrides).items():
        if k in ignore:
            continue
        if k not in cache or not _same(cache[k], v):
            out.append(f"{k} {_fmt(v)} (asked by {src}) != {_fmt(cache.get(k))} (cache)")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(f"{x:.4g}" for x in v)
    return str(v).lower() if isinstance(v, bool) else str(v)
