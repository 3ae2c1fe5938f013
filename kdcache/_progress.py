"""Progress bars: on for a terminal, off for a log file; the bars of libraries kdcache calls follow.

tqdm redraws its bar with ``\\r`` many times a second: in a terminal that is one line, in a
redirected stderr (a batch job's log) every frame is kept. kdcache's own bars take a ``progress``
argument; Hugging Face's (transformers' "Loading weights" of an ``hf:`` model, hub downloads) are
switched by :func:`hugging_face_bars_off` for as long as kdcache's are off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["stderr_is_terminal", "hugging_face_bars_off"]

_HF_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


def stderr_is_terminal() -> bool:
    """Whether progress bars written to stderr reach a terminal (not a file, a pipe or a test's capture)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextmanager
def hugging_face_bars_off() -> Iterator[None]:
    """Hugging Face's progress bars off for the duration: through the environment for a ``transformers`` or
    ``huggingface_hub`` imported later (they read it on import), through their switches for one already
    imported. Each switch turned off is turned on again after."""
    old_env = os.environ.get(_HF_ENV)
    os.environ[_HF_ENV] = "1"
    restore = []
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub

        if not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()
            restore.append(hub.enable_progress_bars)
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        if tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            restore.append(tf_logging.enable_progress_bar)
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(_HF_ENV, None)
        else:
            os.environ[_HF_ENV] = old_env
        for on in restore:
            on()
