"""Shared options and the glue between click and the library.

* ``--config FILE`` (TOML or YAML) supplies any option of a command; flags on the command
  line override it (click's ``default_map``).
* :func:`library_errors` turns a :class:`~kdcache.KdcacheError` into a one-line message
  and exit code 1 (2 for usage errors, as click does).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import click

from kdcache.errors import KdcacheError

__all__ = ["config_option", "data_options", "runtime_options", "library_errors", "echo_json", "load_config_file"]


def load_config_file(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise click.BadParameter(f"config file not found: {path}", param_hint="--config")
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            with open(path) as f:
                data = yaml.safe_load(f) or {}
        elif path.endswith(".toml"):
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            with open(path, "rb") as f:
                data = tomllib.load(f)
        elif path.endswith(".json"):
            with open(path) as f:
                data = json.load(f)
        else:
            raise click.BadParameter(f"{path}: use a .toml, .yaml/.yml or .json file", param_hint="--config")
    except (OSError, ValueError) as e:  # tomllib/yaml/json decode errors derive from ValueError
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="--config") from e
    except Exception as e:  # yaml.YAMLError is not a ValueError
        raise click.BadParameter(f"cannot parse {path}: {e}", param_hint="--config") from e
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a table of option names", param_hint="--config")
    return data


def _apply_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return value
    data = load_config_file(value)
    names = {p.name for p in ctx.command.params if p.name}
    resolved: dict[str, Any] = {}
    for key, v in data.items():
        name = str(key).replace("-", "_")
        if name not in names or name == "config":
            raise click.BadParameter(f"{value}: unknown option {key!r} for '{ctx.command.name}'",
                                     param_hint="--config")
        resolved[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **resolved}
    return value


def config_option(f: Callable) -> Callable:
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_apply_config,
                        help="TOML/YAML/JSON file whose keys are this command's options; flags override it.")(f)


def data_options(*, split_default: str = "train") -> Callable:
    def deco(f: Callable) -> Callable:
        f = click.option("--subset-seed", type=int, default=0, show_default=True,
                         help="Seed of the stratified subset taken by --limit.")(f)
        f = click.option("--limit", type=click.IntRange(min=1), default=None,
                         help="Use a seeded, class-stratified subset of N samples (quick runs).")(f)
        f = click.option("--split", default=split_default, show_default=True, help="Dataset split.")(f)
        f = click.option("--data", "data", default="digits", show_default=True,
                         help="Dataset: digits | hdf5:PATH | folder:PATH | cifar10:ROOT.")(f)
        return f
    return deco


def runtime_options(f: Callable) -> Callable:
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")(f)
    f = click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
                     help="DataLoader worker processes building views.")(f)
    f = click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")(f)
    return f


def library_errors(f: Callable) -> Callable:
    """Run a command body; library errors become a one-line message and exit code 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except KdcacheError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; rerun the same command to resume") from None

    return wrapper


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))
