"""Small helpers shared by the library and the CLI."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

from kdcache.errors import ConfigError, KdcacheError

__all__ = ["human_bytes", "optional_import", "parse_key_values", "parse_model_args"]


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def parse_key_values(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (for fsspec storage options)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_model_args(items: Iterable[str]) -> dict[str, object]:
    """``["small_input=true", "drop_path_rate=0.1"]`` -> ``{"small_input": True, "drop_path_rate": 0.1}``.

    Values are read as YAML scalars/lists, so numbers, booleans and lists need no quoting.
    """
    import yaml

    out: dict[str, object] = {}
    for key, raw in parse_key_values(items).items():
        try:
            out[key] = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot read the value of {key}={raw!r}: {e}") from e
    return out


def optional_import(module: str, *, extra: str, what: str,
                    error: type[KdcacheError] = KdcacheError) -> ModuleType:
    """Import an optional dependency, or raise ``error`` saying what needs it (a plural noun phrase such as
    ``"timm: models"``) and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise error(f"{what} need the optional {module.split('.')[0]} package ({e}); "
                    f"install it with: pip install 'kdcache[{extra}]'") from e
