"""The run directory: what a run writes there, refusing to overwrite a run, and what a failed start leaves.

A directory that already holds a run is refused unless the run continues it (``resume``) or replaces it
(``overwrite``). A run that fails before its first checkpoint removes what it created; one that fails later
keeps its checkpoints and says how to resume.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kdcache._runtime import DistContext
from kdcache.errors import CheckpointError, ConfigError, KdcacheError
from kdcache.train._heldout import TEST_FILE
from kdcache.train._trainconfig import TrainConfig

__all__ = ["CHECKPOINTS", "RUN_DIRS", "RUN_FILES", "early_leftovers", "prepare_run_dir", "remove_leftovers",
           "run_directory", "write_failed"]


# What a run writes into its directory; a directory holding any of them holds a run.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json", TEST_FILE)
RUN_DIRS = ("tb",)


CHECKPOINTS = ("last.pt", "best.pt")


def early_leftovers(out: str) -> list[str]:
    """What a run killed before its first checkpoint leaves (config.json, metrics, tb/): nothing to resume
    from, nothing worth keeping. Empty when the directory holds a checkpoint or no run."""
    if any(os.path.exists(os.path.join(out, f)) for f in CHECKPOINTS):
        return []
    return [f for f in (*RUN_FILES, *RUN_DIRS) if os.path.exists(os.path.join(out, f))]


def remove_leftovers(out: str) -> None:
    for f in RUN_FILES:
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    for d in RUN_DIRS:
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)


def prepare_run_dir(cfg: TrainConfig, log: Callable[[str], None] = print) -> bool:
    """Check and create ``cfg.out``; True when this run created it (so a failed start removes it again).

    A directory that already holds a run is refused unless the run continues it (``resume``) or
    replaces it (``overwrite``, which deletes the old run's files first): never overwritten silently.
    """
    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"run directory {out} is a file; choose another `out`")
    early = early_leftovers(out) if os.path.isdir(out) else []
    if early and not cfg.resume:  # --resume says the same and starts over too (see Run._resume)
        log(f"{out} holds a run stopped before its first checkpoint ({', '.join(early)}): starting it from the "
            "beginning")
        remove_leftovers(out)
    held = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if held and not cfg.resume:
        if not cfg.overwrite:
            raise ConfigError(f"{out} already holds a run ({', '.join(held)}); continue it with `resume`, "
                              "replace it with `overwrite`, or choose another `out`")
        for f in held:
            os.remove(os.path.join(out, f))
        for d in RUN_DIRS:
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    created = not os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run directory {out}: {e.strerror or e}") from e
    return created


@contextmanager
def run_directory(cfg: TrainConfig, ctx: DistContext, log: Callable[[str], None] = print) -> Iterator[None]:
    """The run directory for the run's lifetime: a run that fails before its first checkpoint leaves
    nothing behind (when it made the directory); one that fails later keeps its checkpoints and says so."""
    created = prepare_run_dir(cfg, log) if ctx.is_main else False
    try:
        yield
    except BaseException as e:
        if not ctx.is_main:
            raise
        last = os.path.join(cfg.out, "last.pt")
        if not os.path.exists(last):
            if created:
                shutil.rmtree(cfg.out, ignore_errors=True)
            elif not cfg.resume:  # a directory that held no run: remove only what this run wrote
                for f in RUN_FILES:
                    if os.path.exists(os.path.join(cfg.out, f)):
                        os.remove(os.path.join(cfg.out, f))
                for d in RUN_DIRS:
                    shutil.rmtree(os.path.join(cfg.out, d), ignore_errors=True)
            raise
        if isinstance(e, KdcacheError):
            # a resumed run that fails (its resume refused, or later) already resumes: no advice to add `resume`
            hint = "" if cfg.resume else ": rerun with `resume` to continue from it"
            raise type(e)(f"{e}; {last} is kept{hint}") from e
        raise


def write_failed(path: str, e: BaseException) -> CheckpointError:
    # torch reports a short write as RuntimeError("[enforce fail at inline_container.cc] unexpected pos ...")
    reason = getattr(e, "strerror", None) or ("the file could not be written in full" if isinstance(e, RuntimeError)
                                              else str(e).strip() or type(e).__name__)
    return CheckpointError(f"cannot write {path} ({reason}); is the disk full or the directory read-only?")
