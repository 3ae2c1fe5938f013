"""The views of a dump that resumes or grows a cache are the cache's own.

A cache's views are fixed at its creation. A rerun (resume, ``add_views``) therefore takes them from the
cache, not from the teacher's defaults: view options given with it must agree with the cache
(:func:`kdcache.augment._match.view_conflicts`: a preset states its defaults too) or the dump is refused,
naming each option and the cache's value. ``--add-views N`` alone grows a ``--preset deit-cifar`` cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kdcache.augment import ViewSpec
from kdcache.augment._match import EVAL_ONLY_FIELDS, view_conflicts
from kdcache.cache import CacheStore
from kdcache.cache._restore import sealed_copy
from kdcache.errors import ConfigError, KdcacheError

__all__ = ["existing_views", "views_of_cache"]

_INPUT_KEYS = ("size", "mean", "std", "interpolation", "crop_pct")


def existing_views(out: str, storage_options: Mapping[str, Any] | None) -> ViewSpec | None:
    """The view spec of the cache at ``out``, as sealed at its creation (None when there is none to read: the
    dump's own checks then name whatever is wrong)."""
    try:
        attrs = CacheStore.peek_attrs(out, storage_options)
        if not attrs or not attrs.get("ready") or "kdcache_format" not in attrs:
            return None
        # the views as sealed at creation (what the rerun restores an edited description to), else as stored
        attrs = sealed_copy(out, storage_options) or attrs
        return ViewSpec.from_dict(attrs["identity"]["view_spec"])
    except (KdcacheError, KeyError, TypeError, ValueError, AttributeError):
        return None


def views_of_cache(cached: ViewSpec, overrides: Mapping[str, Any] | None, out: str
                   ) -> tuple[ViewSpec, dict[str, str]]:
    """The cache's views (and, per input setting, where they came from) once the options given agree; an
    eval-only setting given (``crop_pct``) is kept, as a new cache would keep it."""
    differ = view_conflicts(overrides, cached, ignore=EVAL_ONLY_FIELDS)  # the eval crop is no part of a cache
    if differ:
        raise ConfigError(f"view options conflict with the cache {out}, whose views are fixed: {'; '.join(differ)}; "
                          "drop them (a resume or `add_views` uses the cache's own views), or choose another `out`")
    eval_only = {k: v for k, v in (overrides or {}).items() if k in EVAL_ONLY_FIELDS and v is not None}
    sources = dict.fromkeys(_INPUT_KEYS, f"the cache {out}")
    sources.update(dict.fromkeys(eval_only, "set explicitly"))
    return (replace(cached, **eval_only) if eval_only else cached), sources
