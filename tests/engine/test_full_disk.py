"""A real full filesystem (issue 29): a small tmpfs mounted in a private user and mount namespace
(``unshare -rm``; skipped where the machine does not allow it). The dump stops with one line naming the
path and what to do, leaves no lock behind, a rerun while still full fails the same clean way, and once
space is freed the documented rerun resumes to the reference store, bit for bit."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from engine_support import assert_stores_equal

SCRIPT = r"""
set -u
mkdir -p {mnt} && mount -t tmpfs -o size=4m tmpfs {mnt} || exit 97
cp -r {ref} {mnt}/probe.zarr && need=$(du -sk {mnt}/probe.zarr | cut -f1) && rm -rf {mnt}/probe.zarr
avail=$(df -k --output=avail {mnt} | tail -1)
# leave room for the store's creation and about half of its chunks
dd if=/dev/zero of={mnt}/filler bs=1k count=$((avail - need * 6 / 10)) status=none
{dump} > {logs}/full.out 2>&1; echo $? > {logs}/full.rc
ls -a {mnt} > {logs}/after-full.ls; ls -a {mnt}/c.zarr.locks > {logs}/locks-after-full.ls 2>&1
{dump} > {logs}/still-full.out 2>&1; echo $? > {logs}/still-full.rc
ls -a {mnt}/c.zarr.locks > {logs}/locks-after-still-full.ls 2>&1
rm {mnt}/filler
{dump} > {logs}/freed.out 2>&1; echo $? > {logs}/freed.rc
cp -r {mnt}/c.zarr {logs}/c.zarr
"""


def _namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_a_really_full_disk_stops_cleanly_and_resumes_once_freed(world, tmp_path):
    if not _namespaces_allowed():
        pytest.skip("cannot mount a small tmpfs here (unshare -rm not allowed)")
    logs = tmp_path / "logs"
    logs.mkdir()
    mnt = tmp_path / "mnt"
    dump = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "kdcache",
                                             *world.dump_args(mnt / "c.zarr")])
    script = SCRIPT.format(mnt=shlex.quote(str(mnt)), ref=shlex.quote(world.reference), dump=dump,
                           logs=shlex.quote(str(logs)))
    # a lock left unreadable would otherwise be waited for up to 600 s
    env = {**os.environ, "KDCACHE_LOCK_TIMEOUT": "20"}
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr

    def out(name: str) -> tuple[int, str]:
        return int((logs / f"{name}.rc").read_text()), (logs / f"{name}.out").read_text()

    rc, text = out("full")
    assert rc == 1, text
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    assert "No space left on device writing " + str(mnt / "c.zarr") in errors[0], errors[0]
    assert "free space on that filesystem" in errors[0] and "rerun the same command to resume" in errors[0]
    assert "c.zarr.locks" not in (logs / "after-full.ls").read_text()  # the failed writer released its locks
    rc, text = out("still-full")
    assert rc == 1 and "Traceback" not in text and "No space left on device" in text, text
    assert "pid None" not in text and "waiting for another" not in text, text
    assert "No such file" in (logs / "locks-after-still-full.ls").read_text()  # nothing left behind, again
    rc, text = out("freed")
    assert rc == 0, text
    assert_stores_equal(logs / "c.zarr", world.reference)
