"""Run ``kdcache`` with the writer held after its first unit, so a reader sees a half-grown cache for certain.

Usage: ``python paused_writer.py MARKER_DIR <kdcache arguments>``.

How fast a dump writes is not up to a test: on a quick machine every new unit can land between two
polls of a reader. This script makes the intermediate state certain: after its first
``CacheStore.write_unit`` the process touches ``MARKER_DIR/wrote-one`` and waits until
``MARKER_DIR/go`` exists (at most 120 s), then runs on unchanged. The command itself is the
unmodified CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kdcache.cache import CacheStore

MARKERS = Path(sys.argv[1])
WAIT_SECONDS = 120.0


def _pause_after_first_write() -> None:
    real = CacheStore.write_unit
    state = {"first": True}

    def write_unit(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if state["first"]:
            state["first"] = False
            (MARKERS / "wrote-one").touch()
            deadline = time.monotonic() + WAIT_SECONDS
            while time.monotonic() < deadline and not (MARKERS / "go").exists():
                time.sleep(0.01)

    CacheStore.write_unit = write_unit


if __name__ == "__main__":
    _pause_after_first_write()
    sys.argv = ["kdcache", *sys.argv[2:]]
    from kdcache.cli.main import main

    main()
