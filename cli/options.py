"""Shared options and the glue between click and the library.

* ``--config FILE`` (TOML or YAML) supplies any option of a command; flags on the command
  line override it (click's ``default_map``).
* :func:`library_errors` turns a :class:`~kdcache.KdcacheError` into a one-line message
  and exit code 1 (2 for usage errors, as click does).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import signal
import threading
import typing
from collections.abc import Callable
from typing import Any

import click

from kdcache._progress import hugging_face_bars_off, stderr_is_terminal
from kdcache._utils import parse_model_args, parse_storage_options
from kdcache.augment._presets import PRESETS
from kdcache.augment._spec import ViewSpec
from kdcache.errors import KdcacheError

__all__ = ["config_option", "data_options", "runtime_options", "view_options", "eval_view_options", "view_overrides",
           "library_errors", "echo_json", "load_config_file", "SectionedCommand", "section", "random_init_options",
           "progress_option", "teacher_options", "teacher_spec", "target_options", "targets_of"]


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists options under headings (``Data``, ``View`` …) instead of one long list.

    An option's heading is set by the option decorators below (:func:`section`); options without
    one are listed under ``Options``.
    """

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx) if isinstance(param, click.Option) else None  # arguments: in usage
            if rec is not None:
                groups.setdefault(getattr(param, "section", None) or "Options", []).append(rec)
        order = ["Options"] + [g for g in groups if g != "Options"]
        for name in order:
            if name in groups:
                with formatter.section(name):
                    formatter.write_dl(groups[name])


def section(name: str, *decorators: Callable) -> Callable:
    """Apply option ``decorators`` and file the options they add under the ``--help`` heading ``name``."""

    def deco(f: Callable) -> Callable:
        before = len(getattr(f, "__click_params__", []))
        for d in reversed(decorators):
            f = d(f)
        for p in f.__click_params__[before:]:
            p.section = name
        return f

    return deco


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
    params = {p.name: p for p in ctx.command.params if p.name}
    resolved: dict[str, Any] = {}
    for key, v in data.items():
        name = str(key).replace("-", "_")
        if name not in params or name == "config":
            raise click.BadParameter(f"{value}: unknown option {key!r} for '{ctx.command.name}'",
                                     param_hint="--config")
        problem = _config_type_problem(params[name], v)
        if problem:
            raise click.BadParameter(f"{value}: {key} = {v!r} {problem}", param_hint="--config")
        resolved[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **resolved}
    return value


def _config_type_problem(param: click.Parameter, v: Any) -> str | None:
    """Why a config file's value does not fit the option (click would silently coerce 2.7 or true to 2 or 1)."""
    def scalar(x: Any) -> str | None:
        t = param.type
        if getattr(param, "is_flag", False) or isinstance(t, click.types.BoolParamType):
            return None if isinstance(x, bool) else "must be true or false"
        if isinstance(t, (click.types.IntParamType, click.IntRange)):
            return None if isinstance(x, int) and not isinstance(x, bool) else "must be an integer"
        if isinstance(t, (click.types.FloatParamType, click.FloatRange)):
            return None if isinstance(x, (int, float)) and not isinstance(x, bool) else "must be a number"
        if isinstance(t, (click.types.StringParamType, click.Choice, click.Path)):
            return None if isinstance(x, str) else "must be a string"
        return None

    if param.multiple or (param.nargs or 1) != 1:
        if not isinstance(v, list):
            return "must be a list"
        return next((p for p in map(scalar, v) if p), None)
    return scalar(v)


def config_option(f: Callable) -> Callable:
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_apply_config,
                        help="TOML/YAML/JSON file whose keys are this command's options; flags override it.")(f)


_DATA_ARGS = "kdcache_data_args"


def _with_data_args(data: str | None, args: tuple[str, ...]) -> str | None:
    """``--data hfds:X --data-arg k=v`` -> ``hfds:X,k=v``: the options become part of the recorded source."""
    if not args:
        return data
    if not data or not str(data).startswith("hfds:"):
        raise click.BadParameter(f"--data-arg applies to --data hfds:... only, not {data!r}", param_hint="--data-arg")
    for a in args:
        if "=" not in a or a.startswith("="):
            raise click.BadParameter(f"expected KEY=VALUE, got {a!r}", param_hint="--data-arg")
    return str(data) + "".join(f",{a}" for a in args)


def _data_cb(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return _with_data_args(value, ctx.meta.get(_DATA_ARGS, ()))


def _data_args_cb(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    # Whichever of --data and --data-arg click processes first, the other one merges them.
    ctx.meta[_DATA_ARGS] = tuple(value)
    if value and "data" in ctx.params:
        ctx.params["data"] = _with_data_args(ctx.params["data"], tuple(value))


def data_options(*, split_default: str = "train", from_cache: bool = False, recorded_by: str = "cache") -> Callable:
    """--data/--split/--limit/--subset-seed; ``from_cache``: unset options take the data recorded by the cache
    (or checkpoint: ``recorded_by``)."""
    cached = f" [the {recorded_by}'s]" if from_cache else ""
    return section(
        "Data",
        click.option("--data", "data", default=None if from_cache else "digits", show_default=not from_cache,
                     callback=_data_cb,
                     help="Dataset: digits | hdf5:PATH | folder:PATH | cifar10:ROOT | "
                          "hfds:PATH_OR_NAME[,OPTION=VALUE...] | wds:PATTERN." + cached),
        click.option("--data-arg", "data_args", multiple=True, expose_value=False, callback=_data_args_cb,
                     help="KEY=VALUE option of hfds: data (config, revision, image, label, id), repeatable; "
                          "the same as appending ',KEY=VALUE' to --data."),
        click.option("--split", default=None if from_cache else split_default, show_default=not from_cache,
                     help="Dataset split." + cached),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use a seeded, class-stratified subset of N samples (quick runs)." + cached),
        click.option("--subset-seed", type=int, default=None if from_cache else 0, show_default=not from_cache,
                     help="Seed of the stratified subset taken by --limit." + cached),
        click.option("--val-fraction", type=click.FloatRange(min=0, max=1, max_open=True),
                     default=None if from_cache else 0.0, show_default=not from_cache,
                     help="Hold out this fraction of the train split, per class, as the 'val' split "
                          "(deterministic, by sample key); train then means the rest." + cached),
    )


def _progress_cb(ctx: click.Context, _param: click.Parameter, value: bool | None) -> bool:
    # Unset: bars only where they draw in place (a terminal); a redirected stderr would keep every \r frame.
    on = stderr_is_terminal() if value is None else bool(value)
    if not on:  # Hugging Face's bars (an hf: model's weight loading) too, for the command's lifetime
        ctx.with_resource(hugging_face_bars_off())
    return on


def progress_option(help_: str = "Show progress bars (Hugging Face's loading bars too)") -> Callable:
    return click.option("--progress/--no-progress", default=None, callback=_progress_cb,
                        help=f"{help_} [on when stderr is a terminal].")


def _storage_cb(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        return parse_storage_options(value) or None
    except KdcacheError as e:
        raise click.BadParameter(str(e)) from None


def storage_option(f: Callable) -> Callable:
    """``--storage-option KEY=VALUE`` (repeatable), read into the fsspec options a cache URL opens with."""
    return click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                        callback=_storage_cb,
                        help="An fsspec option for a cache URL (repeatable), e.g. endpoint_url=http://host:9000 or "
                             "anon=true. A VALUE that parses as JSON (4, true, {...}) is that value, as in "
                             "fsspec's FSSPEC_<PROTOCOL> settings; credentials stay strings.")(f)


runtime_options = section(
    "Runtime",
    progress_option(),
    click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
                 help="DataLoader worker processes building views."),
    click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."),
)


class _Numbers(click.ParamType):
    """N numbers separated by commas, or one number B meaning (B, B, B, 0) (timm's --color-jitter)."""

    name = "numbers"

    def __init__(self, n: int) -> None:
        self.n = n

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [v for v in str(value).replace(",", " ").split() if v]
        try:
            nums = [float(v) for v in items]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not one number or {self.n} comma-separated numbers", param, ctx)
        if len(nums) == 1:
            nums = [nums[0]] * (self.n - 1) + [0.0]
        if len(nums) != self.n:
            self.fail(f"{value!r} is not one number or {self.n} comma-separated numbers", param, ctx)
        return tuple(nums)


def _view_option(f: dataclasses.Field, hint: Any) -> Callable:
    """One ``--flag`` for a ViewSpec field: its type, choices and help come from the field itself."""
    flag = "--" + f.name.replace("_", "-")
    help_ = f"{f.metadata.get('help', '')} [{_default_text(f.default)}]"
    if hint is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_)
    if typing.get_origin(hint) is tuple:
        n = len(typing.get_args(hint))
        if f.metadata.get("broadcast"):
            return click.option(flag, f.name, type=_Numbers(n), default=None, help=help_)
        return click.option(flag, f.name, type=float, nargs=n, default=None, help=help_)
    if "choices" in f.metadata:
        return click.option(flag, f.name, type=click.Choice(list(f.metadata["choices"])), default=None, help=help_)
    if hint is str:
        return click.option(flag, f.name, type=str, default=None, help=help_)
    ptype = click.IntRange(min=f.metadata.get("min", 1)) if hint is int else float
    return click.option(flag, f.name, type=ptype, default=None, help=help_)


def _preset_text(values: dict) -> str:
    return ", ".join(f"{k.replace('_', '-')} {_default_text(v)}" for k, v in values.items())


def _default_text(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(f"{x:.4g}" for x in v)
    return str(v).lower() if isinstance(v, bool) else str(v)


_VIEW_FIELDS = dataclasses.fields(ViewSpec)
_VIEW_HINTS = typing.get_type_hints(ViewSpec)

view_options = section(
    "View (defaults: the model's input size, normalisation, interpolation and eval crop; then --preset's; "
    "then ViewSpec's)",
    click.option("--preset", "preset", type=click.Choice(list(PRESETS)), default=None,
                 help="Set the view options of a recipe together (explicit options override it): "
                      + "; ".join(f"{k}: {_preset_text(v)}" for k, v in PRESETS.items()) + "."),
    *[_view_option(f, _VIEW_HINTS[f.name]) for f in _VIEW_FIELDS],
)

# What a deterministic evaluation view uses (resize, centre crop, normalise): ``evaluate --model``.
_EVAL_VIEW_FIELDS = ("size", "interpolation", "antialias", "mean", "std", "crop_pct")
eval_view_options = section(
    "Eval view (with --model; defaults: the model's input size, normalisation, interpolation and eval crop)",
    *[_view_option(f, _VIEW_HINTS[f.name]) for f in _VIEW_FIELDS if f.name in _EVAL_VIEW_FIELDS],
)


def view_overrides(kw: dict) -> dict:
    """Pop the view options out of a command's keyword arguments: the ones the user gave, as ViewSpec fields
    (and ``preset``)."""
    out = {f.name: kw.pop(f.name, None) for f in _VIEW_FIELDS}
    out["preset"] = kw.pop("preset", None)
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in out.items()
            if v is not None and v != ()}


random_init_options = (
    click.option("--random-init", is_flag=True,
                 help="Use the teacher untrained, initialised from --init-seed (tests and benchmarks only)."),
    click.option("--init-seed", type=int, default=0, show_default=True,
                 help="Seed of --random-init's initialisation (the same weights in every process)."),
)


teacher_options = (
    click.option("--teacher", default=None,
                 help="Teacher model name (registered, torchvision, timm:NAME, hf:DIR_OR_HUB_ID, python:mod:fn)."),
    click.option("--teacher-weights", type=click.Path(exists=True), default=None,
                 help="Teacher weights: a kdcache or torch checkpoint, a state dict, a .safetensors file, or a "
                      "timm/Hugging Face checkpoint directory (torch files load with weights_only=True)."),
    click.option("--teacher-arg", "teacher_args", multiple=True,
                 help="KEY=VALUE passed to the teacher's constructor (repeatable), e.g. pretrained=true."),
    *random_init_options,
    click.option("--amp/--no-amp", default=False, show_default=True, help="Mixed precision on CUDA."),
    click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
)


def teacher_spec(teacher, teacher_weights, teacher_args, random_init, init_seed):
    """The :class:`~kdcache.engine.TeacherSpec` of the :data:`teacher_options` given."""
    from kdcache._teacher import TeacherSpec

    return TeacherSpec(name=teacher, weights=teacher_weights, kwargs=parse_model_args(teacher_args),
                       random_init=random_init, init_seed=init_seed)


target_options = (
    click.option("--targets", default="full", show_default=True,
                 help="The teacher's logits: full | topk:K (the top K, quantised) | none (with --embed only)."),
    click.option("--embed", type=click.Choice(["pooled"]), default=None,
                 help="Also store the teacher's pooled embedding of every view: its pre-logits features, as timm's "
                      "forward_head(pre_logits=True) gives them (the input of a torchvision or Hugging Face "
                      "classifier; a python: model's forward_embedding(x))."),
    click.option("--embed-dtype", type=click.Choice(["float16", "int8"]), default="float16", show_default=True,
                 help="How the embedding is stored: 2 bytes a value, or 1 plus a 4-byte scale per vector."),
)


def targets_of(targets: str, embed: str | None, embed_dtype: str) -> str:
    """The targets string of :data:`target_options` (``full+pooled:int8`` ...)."""
    if embed and "+" in targets:
        raise click.UsageError(f"--targets {targets} names an embedding already; drop --embed")
    return f"{targets}+{embed}:{embed_dtype}" if embed else targets


def _ignore(_signum: int, _frame: Any) -> None:
    pass  # a Python handler, not SIG_DFL: a signal pending while the handler changes is then no error


def _sigterm_as_interrupt(received: list[int]) -> Callable[[], None]:
    """SIGTERM (what batch schedulers and ``kill`` send) stops a command as Ctrl-C does: the same cleanup (locks
    released, what is finished kept) and the same message. Each signal taken is appended to ``received``.
    Returns the function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminated(signum: int, _frame: Any) -> None:
        received.append(signum)
        if hasattr(signal, "SIGCHLD"):  # DataLoader workers in the signalled process group die of it too, and
            signal.signal(signal.SIGCHLD, _ignore)  # torch's SIGCHLD handler would raise that, even at exit
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated)
    return lambda: signal.signal(signal.SIGTERM, previous)


def library_errors(f: Callable) -> Callable:
    """Run a command body; library errors become a one-line message and exit code 1, SIGTERM and Ctrl-C
    (KeyboardInterrupt) one line that says how to resume."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        received: list[int] = []
        restore = _sigterm_as_interrupt(received)
        try:
            return f(*args, **kwargs)
        except KdcacheError as e:  # a DataLoader worker's error reads as the main process's one line
            from kdcache._runtime import unwrap_worker_error

            raise click.ClickException(_flag_names(str(unwrap_worker_error(e)), click.get_current_context())) from e
        except KeyboardInterrupt:
            raise click.ClickException(_interrupted()) from None
        except RuntimeError:
            if received:  # a SIGTERM to the process group kills DataLoader workers too, and the loader says so
                raise click.ClickException(_interrupted()) from None
            raise
        except OSError as e:  # a path the library did not check itself: still one line, never a traceback
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from e
        finally:
            restore()

    return wrapper


def _interrupted() -> str:
    """How to continue an interrupted command: a training run resumes with --resume, a dump by rerunning it."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and any(p.name == "resume" for p in ctx.command.params):
        return "interrupted; rerun the same command with --resume to continue from the last checkpoint"
    return "interrupted; rerun the same command to resume"


def _flag_names(message: str, ctx: click.Context) -> str:
    """Library messages name settings as `key`; on the command line they read as the command's --flag."""
    flags = {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.name}

    def repl(m: re.Match) -> str:
        return flags.get(m.group(1), m.group(1))

    return re.sub(r"`([a-z_]+)`", repl, message)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))
