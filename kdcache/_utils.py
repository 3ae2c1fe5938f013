"""Small helpers shared by the library and the CLI."""

from __future__ import annotations

import importlib
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from kdcache.errors import ConfigError, KdcacheError

__all__ = ["check_model_kwargs", "check_subset_args", "human_bytes", "new_file_mode", "optional_import", "parse_key_values",
           "parse_model_args", "parse_storage_options", "recordable_config", "redact_secrets", "temp_file"]


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
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (what :func:`parse_model_args` and
    :func:`parse_storage_options` read)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


_SECRET_WORDS = ("secret", "key", "token", "password", "passwd", "credential", "session", "sas", "signature")


def _is_secret(key: Any) -> bool:
    return any(w in str(key).lower() for w in _SECRET_WORDS)


def redact_secrets(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of fsspec storage options fit to record: values of keys that look like credentials
    (``key``, ``secret``, ``token``, ``password``, ...; nested tables included) become ``"<redacted>"``."""
    if d is None:
        return None
    return {k: (redact_secrets(v) if isinstance(v, Mapping) else
                "<redacted>" if _is_secret(k) else v) for k, v in d.items()}


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` pairs read as fsspec reads its own ``FSSPEC_<PROTOCOL>`` settings: a
    VALUE that parses as JSON is that value (``4``, ``0.5``, ``true``, ``null``, ``{"region_name": "x"}``),
    any other is the string. Credentials (keys :func:`redact_secrets` hides) stay strings whatever they look
    like: a secret of digits is not a number."""
    import json

    out: dict[str, Any] = {}
    for key, raw in parse_key_values(items).items():
        try:
            out[key] = raw if _is_secret(key) else json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def recordable_config(cfg: Any) -> dict[str, Any]:
    """``cfg.to_dict()`` with its ``storage_options`` credentials redacted (what caches and runs record)."""
    d = cfg.to_dict()
    if d.get("storage_options"):
        d["storage_options"] = redact_secrets(d["storage_options"])
    return d


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


# Constructor arguments a run sets from its data: given by hand they would clash with the run's own value.
DATA_SET_KWARGS = ("num_classes",)


def check_subset_args(limit: Any, subset_seed: Any, error: type[Exception]) -> None:
    """A data subset's `limit` (a positive integer or None) and `subset_seed` (an integer), or ``error``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit <= 0):
        raise error(f"limit must be a positive integer or None (all samples), got {limit!r}")
    if isinstance(subset_seed, bool) or not isinstance(subset_seed, numbers.Integral):
        raise error(f"subset_seed must be an integer, got {subset_seed!r}")


def check_model_kwargs(kwargs: Mapping[str, Any], option: str) -> None:
    """Refuse, naming ``option``, constructor arguments the data sets (``num_classes``: its class count)."""
    clash = [k for k in DATA_SET_KWARGS if k in kwargs]
    if clash:
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in clash)
        raise ConfigError(f"`{option}` {given}: the number of classes comes from the data (its class count), "
                          "not from a constructor argument; drop it")


def optional_import(module: str, *, extra: str, what: str,
                    error: type[KdcacheError] = KdcacheError) -> ModuleType:
    """Import an optional dependency, or raise ``error`` saying what needs it (a plural noun phrase such as
    ``"timm: models"``) and which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise error(f"{what} need the optional {module.split('.')[0]} package ({e}); "
                    f"install it with: pip install 'kdcache[{extra}]'") from e


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask (0o644 under umask 022)."""
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it (os.umask sets it, racing threads)
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_file(directory: str | os.PathLike, name: str) -> str:
    """A new empty file ``.NAME.XXXX.tmp`` in ``directory``, to be written and renamed onto ``NAME``, with the
    mode ``open()`` would give NAME (mkstemp's 0o600 would keep teammates on a shared filesystem out)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    return tmp
