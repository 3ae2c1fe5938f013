"""Caches on a real S3 endpoint (moto in server mode on 127.0.0.1, through s3fs and --storage-option): the
guarantees local caches have — dump equal bit for bit, info, verify, train-student, CacheDataset,
--add-views, a SIGKILLed dump that resumes, damaged objects detected and repaired — and one-line errors
for an unreachable endpoint, wrong credentials and a missing bucket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from engine_support import (
    BLOCK,
    VIEWS,
    assert_bitwise_equal,
    check_snapshot,
    cli_run,
    kdcache_cmd,
    logs,
    paused_writer_cmd,
    read_all_arrays,
    run,
    start,
    wait_for,
    watch_growth,
)
from kdcache.cli.main import cli
from s3_server import SECRET_KEY, start_s3_server

from kdcache import CacheDataset
from kdcache.cache import CacheStore
from kdcache.engine import TeacherSpec
from kdcache.engine._verify import verify_cache
from kdcache.errors import CacheDamagedError, CacheNotFoundError, StorageError

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3():
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_cache(world, s3) -> str:
    """The world's reference command, run through the CLI into s3://BUCKET/c.zarr (tests that change it copy it)."""
    url = f"s3://{s3.new_bucket()}/c.zarr"
    cli_ok(*world.dump_args(url, extra=s3.cli_options()))
    return url


def s3_copy(s3, url: str) -> str:
    """A server-side copy of the cache at ``url`` in a new bucket."""
    dst = f"s3://{s3.new_bucket()}/c.zarr"
    s3.fs().copy(url, dst, recursive=True)
    return dst


def read_s3_arrays(url: str, so: dict) -> dict[str, np.ndarray]:
    g = zarr.open_group(url, mode="r", storage_options=so)
    return {name: np.asarray(g[name][...]) for name in sorted(g.array_keys())}


def assert_equal_to(url: str, so: dict, reference: str) -> None:
    got, want = read_s3_arrays(url, so), read_all_arrays(reference)
    assert sorted(got) == sorted(want)
    for name in got:
        assert_bitwise_equal(name, got[name], want[name])
    a, b = CacheStore.open(url, storage_options=so), CacheStore.open(reference)
    assert a.identity == b.identity and a.attrs["view_spec"] == b.attrs["view_spec"]


def done_units_s3(url: str, so: dict) -> int:
    try:
        done = np.asarray(zarr.open_group(url, mode="r", storage_options=so)["done"][...])
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    blocks = -(-done.shape[0] // BLOCK)
    return int(sum(done[b * BLOCK:(b + 1) * BLOCK].all(axis=0).sum() for b in range(blocks)))


def cli_ok(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def test_a_cache_on_s3_dumps_reads_trains_verifies_and_grows(world, s3, s3_cache, tmp_path):
    url, so = s3_cache, s3.storage_options()
    opts = s3.cli_options()
    assert_equal_to(url, so, world.reference)  # the same bytes as the local uninterrupted dump
    info = json.loads(cli_ok("info", url, "--json", *opts).stdout)
    assert info["num_views"] == VIEWS and info["done_fraction"] == 1.0
    local_bytes = sum(f.stat().st_size for f in Path(world.reference).rglob("*") if f.is_file())
    # the objects' sizes, listed through the same storage options (zarr.json differs: its recorded `out`)
    assert abs(info["bytes_on_disk"] - local_bytes) < 2048
    rep = json.loads(cli_ok("verify", url, "--integrity-only", "--json", *opts).stdout)
    assert rep["ok"] and rep["units_done"] == world.num_units
    rep = json.loads(cli_ok("verify", url, "--teacher-weights", world.teacher, "--samples", "16", "--json",
                            "--device", "cpu", *opts).stdout)
    assert rep["ok"] and rep["samples_checked"] == 16
    cli_ok(*world.train_args(url, tmp_path / "run", epochs=1, steps=2), *opts)
    assert (tmp_path / "run" / "last.pt").is_file()
    # credentials given as storage options are never recorded: not in the cache, not in the run
    recorded = CacheStore.open(url, storage_options=so).attrs["config"]["storage_options"]
    assert recorded == {"endpoint_url": s3.endpoint, "key": "<redacted>", "secret": "<redacted>"}
    assert SECRET_KEY not in (tmp_path / "run" / "config.json").read_text()
    assert SECRET_KEY.encode() not in (tmp_path / "run" / "last.pt").read_bytes()
    ds = CacheDataset(url, world.data, storage_options=so)
    local = CacheDataset(world.reference, world.data)
    for i in (0, 77):
        a, b = ds[i], local[i]
        assert a["view"] == b["view"] and (a["image"] == b["image"]).all()
        assert (a["targets"]["logits"] == b["targets"]["logits"]).all()
    # --add-views: one more view, the first VIEWS untouched, verified by the teacher
    url = s3_copy(s3, url)
    before = read_s3_arrays(url, so)["logits"]
    cli_ok(*world.dump_args(url, views=None, extra=["--add-views", "1", *opts]))
    store = CacheStore.open(url, storage_options=so)
    assert store.num_views == VIEWS + 1 and store.done_units().all()
    assert_bitwise_equal("logits[:, :V]", read_s3_arrays(url, so)["logits"][:, :VIEWS], before)
    assert verify_cache(url, TeacherSpec(weights=world.teacher), None, samples=16, device="cpu",
                        storage_options=so)["ok"]


@pytest.mark.slow
def test_a_killed_dump_to_s3_resumes_to_the_same_bytes(world, s3, tmp_path):
    url, so = f"s3://{s3.new_bucket()}/c.zarr", s3.storage_options()
    args = world.dump_args(url, extra=s3.cli_options())
    proc = start(kdcache_cmd(args), tmp_path, "kill")
    wait_for(lambda: done_units_s3(url, so) >= world.num_units // 4, proc, what="a quarter of the units",
             interval=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the dump finished before the kill\n{logs(proc)}"
    done = done_units_s3(url, so)
    assert 0 < done < world.num_units
    result = cli_run(args + ["--json"])  # the same command, in-process: the kill is what needs a process
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["units_computed"] == world.num_units - done and summary["done_fraction"] == 1.0
    assert_equal_to(url, so, world.reference)


def test_deleted_and_corrupted_objects_are_detected_and_repaired(world, s3, s3_cache):
    url, so = s3_copy(s3, s3_cache), s3.storage_options()
    opts = s3.cli_options()
    store, fs = CacheStore.open(url, storage_options=so), s3.fs()
    deleted = store.chunk_location("logits", store.unit_chunk("logits", 1, 2))
    corrupted = store.chunk_location("crop", store.unit_chunk("crop", 3, 0))
    fs.rm(deleted)
    data = bytearray(fs.cat(corrupted))
    data[len(data) // 2] ^= 0x55
    fs.pipe(corrupted, bytes(data))
    res = CliRunner().invoke(cli, ["verify", url, "--integrity-only", "--json", *opts])
    assert res.exit_code == 1
    report = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert {(d["array"], d["block"], d["view"], d["problem"]) for d in report["damage"]} == \
        {("logits", 1, 2, "missing"), ("crop", 3, 0, "corrupt")}
    with pytest.raises(CacheDamagedError, match="logits chunk of block 1, view 2 is missing"):
        CacheStore.open(url, storage_options=so).read_unit(1, 2)
    line = one_line_error(CliRunner().invoke(cli, ["info", url, *opts]))
    assert "logits chunk of block 1, view 2 is missing" in line and "rerun the dump-teacher command" in line
    res = cli_ok(*world.dump_args(url, extra=opts))
    assert "2 damaged chunks" in res.output
    assert_equal_to(url, so, world.reference)
    assert cli_ok("verify", url, "--integrity-only", *opts)


def test_unreachable_endpoint_and_missing_bucket_are_one_line_errors(s3):
    url = f"s3://{s3.new_bucket()}/c.zarr"
    dead = f"http://127.0.0.1:{_closed_port()}"
    # a real process, so that what Python prints at exit counts too: one line, no traceback. botocore's own
    # retries are turned off (AWS_MAX_ATTEMPTS=1: ~8 s of back-off less); s3fs's retries stay as users get them
    res = run(kdcache_cmd(["info", url, *s3.cli_options(endpoint_url=dead)]),
              env=dict(os.environ, AWS_MAX_ATTEMPTS="1"))
    assert res.returncode == 1 and res.stdout == "", res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"Error: {url}: cannot connect to endpoint {dead}") and "endpoint_url" in lines[0]
    line = one_line_error(CliRunner().invoke(cli, ["info", "s3://no-such-bucket-kd/c.zarr", *s3.cli_options()]))
    assert line == "Error: cache not found: s3://no-such-bucket-kd/c.zarr"
    with pytest.raises(CacheNotFoundError):
        CacheStore.open(f"s3://{s3.new_bucket()}/absent.zarr", storage_options=s3.storage_options())
    line = one_line_error(CliRunner().invoke(cli, ["dump-teacher", "--data", "digits", "--limit", "16", "--teacher",
                                                   "cnn_tiny", "--random-init", "--out", "s3://no-such-bucket-kd/c.zarr",
                                                   "--no-progress", "--workers", "0", *s3.cli_options()]))
    assert line == "Error: cannot create s3://no-such-bucket-kd/c.zarr: The specified bucket does not exist"


def test_wrong_credentials_are_a_one_line_error(world):
    """moto checks signatures once its IAM authentication is on (after the 3 requests that make a user)."""
    import boto3

    server = start_s3_server(auth_after=3)
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
        iam.create_user(UserName="kd")
        key = iam.create_access_key(UserName="kd")["AccessKey"]
        iam.put_user_policy(UserName="kd", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        good = dict(key=key["AccessKeyId"], secret=key["SecretAccessKey"])
        import s3fs

        s3fs.S3FileSystem(**server.storage_options(**good), skip_instance_cache=True).mkdir("kd-auth")
        url = "s3://kd-auth/c.zarr"
        world.dump(url, storage_options=server.storage_options(**good), views=1)
        assert json.loads(cli_ok("info", url, "--json", *server.cli_options(**good)).stdout)["done_fraction"] == 1
        for bad in (dict(key=key["AccessKeyId"], secret="wrong-secret"),
                    dict(key="AKIANOSUCHKEY0000000", secret="wrong")):
            line = one_line_error(CliRunner().invoke(cli, ["info", url, *server.cli_options(**bad)]))
            assert line.startswith(f"Error: {url}: access refused by endpoint {server.endpoint}"), line
            assert "check the credentials" in line
            with pytest.raises(StorageError, match="access refused"):
                CacheStore.open(url, storage_options=server.storage_options(**bad))
        line = one_line_error(CliRunner().invoke(cli, world.dump_args(
            url, views=1, extra=server.cli_options(key=key["AccessKeyId"], secret="wrong"))))
        assert "access refused" in line
    finally:
        server.stop()


def _closed_port() -> int:
    from s3_server import free_port

    return free_port()  # bound and released: nothing listens there


@pytest.mark.slow
def test_two_torchrun_nodes_dump_into_one_s3_cache_equal_to_one_process(world, s3, tmp_path):
    """The multi-machine shape on one machine: two torchrun nodes (--nnodes 2, rendezvous on 127.0.0.1),
    two processes each, write disjoint blocks of one s3:// cache; it equals the one-process dump bit for bit."""
    from s3_server import free_port

    url, so = f"s3://{s3.new_bucket()}/c.zarr", s3.storage_options()
    port = free_port()
    nodes = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "kdcache", *world.dump_args(url, extra=s3.cli_options())]
        nodes.append(start(cmd, tmp_path, f"node{node}"))
    try:
        for p in nodes:
            p.wait(timeout=400)
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p in nodes:
        assert p.returncode == 0, logs(p)
    assert_equal_to(url, so, world.reference)
    assert CacheStore.open(url, storage_options=so).done_units().all()


@pytest.mark.slow
def test_two_students_read_an_s3_cache_while_a_dump_grows_it(world, s3, two_view_cache, tmp_path):
    """As on disk (tests/engine/test_concurrent.py): two students train from the s3:// cache while --add-views
    writes two more views; every snapshot a reader opens holds only finished views with their final bytes."""
    url, so = f"s3://{s3.new_bucket()}/c.zarr", s3.storage_options()
    s3.fs().put(two_view_cache, url, recursive=True)
    ref = CacheStore.open(world.reference)
    reference = {name: np.asarray(ref.array(name)[...]) for name in ref.view_array_names}
    opts = s3.cli_options()
    markers = tmp_path / "markers"
    markers.mkdir()
    dump = start(paused_writer_cmd(markers, world.dump_args(url, views=None, extra=["--add-views", "2", *opts])),
                 tmp_path, "add")
    students = [start(kdcache_cmd(world.train_args(url, tmp_path / f"run{i}", epochs=2, seed=i) + opts),
                      tmp_path, f"student{i}") for i in range(2)]
    try:
        seen = watch_growth(dump, markers, lambda: check_snapshot(url, reference, so), lambda last: 0.1)
        assert dump.returncode == 0, logs(dump)
        for s in students:
            s.wait(timeout=300)
    finally:
        for p in (dump, *students):
            if p.poll() is None:
                p.kill()
                p.wait()
    blocks = world.num_units // VIEWS
    assert any(v == 4 and 0 < n < 2 * blocks for v, n in seen), f"no intermediate state observed: {seen}"
    assert seen[-1] == (4, 2 * blocks)
    assert_equal_to(url, so, world.reference)
    for i, s in enumerate(students):
        assert s.returncode == 0, logs(s)
        rows = [json.loads(line) for line in (tmp_path / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1] and all(np.isfinite(r["train/loss"]) for r in rows)


def test_a_teacher_is_added_to_an_s3_cache_and_listed_verified_and_read(world, s3, s3_cache, tmp_path):
    """add-teacher on an s3:// cache: its group teachers/NAME on the object store, the same bytes as added to the
    local reference, found by info, verify, CacheDataset and a student run through the same storage options."""
    url, so, opts = s3_copy(s3, s3_cache), s3.storage_options(), s3.cli_options()
    local = tmp_path / "local.zarr"
    shutil.copytree(world.reference, local)
    r20 = ["--teacher", "cifar_resnet20", "--random-init", "--init-seed", "3", "--device", "cpu", "--workers", "0",
           "--no-progress"]
    cli_ok("add-teacher", url, "--name", "r20", *r20, *opts)
    cli_ok("add-teacher", str(local), "--name", "r20", *r20)
    got = read_s3_arrays(f"{url}/teachers/r20", so)
    want = read_all_arrays(local / "teachers" / "r20")
    assert sorted(got) == sorted(want)
    for name in ("logits", "argmax"):
        assert_bitwise_equal(name, got[name], want[name])
    info = json.loads(cli_ok("info", url, "--json", *opts).stdout)
    assert [t["name"] for t in info["teachers"]] == ["main", "r20"] and info["teachers"][1]["done_fraction"] == 1.0
    rep = json.loads(cli_ok("verify", url, "--name", "r20", "--samples", "16", "--json", *opts).stdout)
    assert rep["ok"] and rep["samples_checked"] == 16
    ds = CacheDataset(url, world.data, storage_options=so, teachers=["main", "r20"])
    assert set(ds[3]["targets"]) == {"main", "r20"}
    cli_ok(*world.train_args(url, tmp_path / "run", epochs=1, steps=2), "--teachers", "main,r20", *opts)
    assert (tmp_path / "run" / "last.pt").is_file()


def test_done_lists_the_done_array_once_instead_of_asking_for_each_chunk(world, s3, s3_cache, caplog):
    """Which units are done is one listing of done/ and one GET per done chunk on an object store (HEADs per
    block and view cost 128 of the reference dump's 584 requests); a done chunk deleted behind the cache's back is still named as missing,
    and once written back is seen by the same process (s3fs caches what a listing saw)."""
    import logging

    url, so = s3_copy(s3, s3_cache), s3.storage_options()
    store = CacheStore.open(url, storage_options=so)
    with caplog.at_level(logging.DEBUG, logger="s3fs"):
        assert store.done_units().all()
    calls = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CALL: ")]
    # neither an existence check nor s3fs's size check before each read (kdcache opens s3:// with max_concurrency=1)
    assert not [c for c in calls if c.startswith("CALL: head_object") and "/done/c/" in c], calls
    assert sum(c.startswith("CALL: list_objects_v2") for c in calls) == 1, calls
    assert sum(c.startswith("CALL: get_object") and "/done/c/" in c for c in calls) == world.num_units, calls
    chunk = store.chunk_location("done", store.unit_chunk("done", 2, 1))
    data = s3.fs().cat(chunk)
    s3.fs().rm(chunk)  # another process (another filesystem object) deletes it, then writes it back
    so8 = {**so, "max_concurrency": 8}  # as a user may set it: s3fs then looks each object up before reading it
    with pytest.raises(CacheDamagedError, match="done chunk of block 2, view 1 is missing"):
        CacheStore.open(url, storage_options=so8).done_units()
    s3.fs().pipe(chunk, data)  # a listing leaves nothing cached behind: this process sees the chunk again
    assert CacheStore.open(url, storage_options=so8).done_units().all()


def test_numeric_storage_options_reach_s3fs_as_numbers(s3, s3_cache):
    """`--storage-option max_concurrency=4` is the number 4 (s3fs compares it with 1: as the string "4" it was a
    TypeError on opening the store) and `anon=false` the boolean."""
    res = cli_ok("info", s3_cache, "--json", *s3.cli_options(max_concurrency="4", anon="false"))
    assert json.loads(res.stdout)["done_fraction"] == 1.0


def test_reading_units_from_s3_is_one_get_a_chunk_and_no_existence_check(world, s3, s3_cache, caplog):
    """A reader's units (a training window, an added teacher's replay parameters) come from an object store in
    one GET per chunk, all in flight at once, with no HEAD before each (reading is the existence check: half
    the requests the store is billed for); a chunk deleted behind the cache's back is still named as missing
    (never read as the fill value), a corrupted one as corrupt, and the values equal a local copy's."""
    import logging

    url, so = s3_copy(s3, s3_cache), s3.storage_options()
    store = CacheStore.open(url, storage_options=so)
    units = [(b, v) for b in range(store.num_blocks) for v in range(store.num_views)]
    with caplog.at_level(logging.DEBUG, logger="s3fs"):
        got = store.read_units(units)
    calls = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CALL: ")]
    names = store.view_array_names
    chunk_calls = [c for c in calls if any(f"/{n}/c/" in c for n in names)]
    assert not [c for c in chunk_calls if c.startswith("CALL: head_object")], chunk_calls
    assert sum(c.startswith("CALL: get_object") for c in chunk_calls) == len(units) * len(names), chunk_calls
    want = CacheStore.open(world.reference).read_units(units)
    for u in units:
        for n in names:
            assert np.array_equal(got[u][n], want[u][n]), (u, n)
    gone = store.chunk_location(names[0], store.unit_chunk(names[0], 1, 0))
    bad = store.chunk_location(names[-1], store.unit_chunk(names[-1], 0, 1))
    s3.fs().rm(gone)
    s3.fs().pipe(bad, b"\x00" * 16)
    with pytest.raises(CacheDamagedError, match=rf"{names[0]} chunk of block 1, view 0 is missing"):
        CacheStore.open(url, storage_options=so).read_units(units)
    with pytest.raises(CacheDamagedError, match=rf"{names[-1]} chunk of block 0, view 1 is corrupt"):
        CacheStore.open(url, storage_options=so).read_unit(0, 1)
