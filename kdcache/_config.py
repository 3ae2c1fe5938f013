"""One base for kdcache's frozen config dataclasses: strict ``from_dict``, type checks, ``to_dict``.

Configs flow one way — file → dataclass → overrides — and are written into every checkpoint and
cache. :class:`ConfigBase` gives each of them the same behaviour:

* construction checks every field against its annotation (``views = 2.7`` or ``views = true``
  for an ``int`` is refused, never coerced), turns lists into tuples for tuple fields and dicts
  into nested configs;
* :meth:`ConfigBase.from_dict` refuses unknown keys, naming them and the known ones;
* :meth:`ConfigBase.to_dict` gives plain JSON-safe data that ``from_dict`` turns back into an
  equal config.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Union

from kdcache.errors import ConfigError

__all__ = ["ConfigBase", "PRECISIONS"]

# The numeric precisions of a run or a dump (kdcache._runtime applies them); here, torch-free, for configs.
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigBase:
    """Mix into a ``@dataclass(frozen=True)``; subclasses that define ``__post_init__`` call ``super()``'s first."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}  # resolved annotations, per class

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            checked = _check(f"{type(self).__name__}.{f.name}", value, hints[f.name])
            if checked is not value:
                object.__setattr__(self, f.name, checked)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a table of keys, got {type(d).__name__}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        known = sorted(f.name for f in fields)
        unknown = sorted(set(d) - set(known))
        label = _label(cls)
        if unknown:
            raise ConfigError(f"unknown {label} keys {unknown}; known keys: {known}")
        missing = [f.name for f in fields if f.name not in d and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{label} needs a {missing[0]!r}")
        return cls(**d)


def _label(cls: type) -> str:
    """``DumpConfig`` -> ``dump config``: how messages name a config."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()


def _type_hints(cls: type) -> dict[str, Any]:
    hints = ConfigBase._hints.get(cls)
    if hints is None:
        hints = ConfigBase._hints[cls] = typing.get_type_hints(cls)
    return hints


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check(where: str, value: Any, tp: Any) -> Any:
    """``value`` checked against annotation ``tp`` (lists -> tuples, dicts -> nested configs)."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(where, value, a)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where} must be {_name(tp)}, got {_describe(value)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_describe(value)}")
        return value
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp.from_dict(value)
        raise ConfigError(f"{where} must be a {tp.__name__} or a table of its keys, got {_describe(value)}")
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table (mapping), got {_describe(value)}")
        # JSON and YAML have no tuples: ranges such as view scales come back as lists.
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a sequence, got {_describe(value)}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{where} must hold {len(items)} values, got {_describe(value)}")
        return tuple(_check(f"{where}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, items)))
    return value


def _name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return " or ".join(getattr(a, "__name__", str(a)) for a in args) + (
        " or null" if type(None) in typing.get_args(tp) else "")
