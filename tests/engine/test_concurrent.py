"""Readers and a writer on one cache at the same time: students train while views are added.

The contract (kdcache/cache/_store.py, kdcache/train/_schedule.py): a reader only ever selects
views whose ``done`` is set, and because a unit's data is written before its flag, whatever a
reader selects already holds its final bytes. Readers never write to the cache.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from engine_support import (
    BLOCK,
    N_TRAIN,
    assert_stores_equal,
    check_snapshot,
    helper_env,
    kdcache_cmd,
    logs,
    paused_writer_cmd,
    read_audit,
    start,
    watch_growth,
)

from kdcache.cache import CacheStore

BLOCKS = N_TRAIN // BLOCK
STUDENT_EPOCHS = 2


@pytest.mark.slow
def test_students_and_readers_during_add_views(world, two_view_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    shutil.copytree(two_view_cache, cache)
    ref = CacheStore.open(world.reference)
    reference = {name: np.asarray(ref.array(name)[...]) for name in ref.view_array_names}

    audit = tmp_path / "audit"
    audit.mkdir()
    env = helper_env(KDCACHE_AUDIT_DIR=str(audit), KDCACHE_AUDIT_WATCH=str(cache))
    markers = tmp_path / "markers"
    markers.mkdir()
    dump = start(paused_writer_cmd(markers, world.dump_args(cache, views=None, extra=["--add-views", "2"])),
                 tmp_path, "add")
    students = [start(kdcache_cmd(world.train_args(cache, tmp_path / f"run{i}", epochs=STUDENT_EPOCHS, seed=i)),
                      tmp_path, f"student{i}", env=env) for i in range(2)]
    try:
        # Leave the CPU to the writer: poll slowly until the views exist, then often.
        seen = watch_growth(dump, markers, lambda: check_snapshot(str(cache), reference),
                            lambda last: 0.25 if last[0] == 2 else 0.05)
        assert dump.returncode == 0, logs(dump)
        for s in students:
            s.wait(timeout=180)
    finally:
        for p in (dump, *students):
            if p.poll() is None:
                p.kill()
                p.wait()

    # The readers saw the cache grow: at least one snapshot with the new views partly done.
    assert any(v == 4 and 0 < n < 2 * BLOCKS for v, n in seen), f"no intermediate state observed: {seen}"
    assert seen[-1] == (4, 2 * BLOCKS)
    assert_stores_equal(cache, world.reference)

    for i, s in enumerate(students):
        assert s.returncode == 0, logs(s)
        rows = [json.loads(line) for line in (tmp_path / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(STUDENT_EPOCHS))
        assert all(np.isfinite(r["train/loss"]) for r in rows)
    writes = read_audit(audit)
    assert len(writes) == 1 and sum(1 for _ in audit.glob("*.json")) == 2, "both students must be audited"
    assert writes == {-1: []}, f"a reader wrote into the cache: {writes}"
