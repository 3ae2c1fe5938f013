"""Embedding targets (format 4): the teacher's pooled embedding of every view, beside its logits or alone.

The contract: the embedding is taken in the same forward pass, on the same recorded views, as the logits;
adding it changes none of the other arrays (a ``full+pooled`` cache holds the reference cache's bytes plus
an ``embedding``); the view rebuilt from its recorded parameters reproduces the cached embedding within the
codec's tolerance (float16: one ulp; int8: half a step of the vector's largest component), whatever the
worker count; ``verify`` checks it, a damaged embedding chunk is named and repaired, a killed dump resumes
bit for bit.
"""

from __future__ import annotations

import json
import shutil
import signal
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from engine_support import (
    VIEWS,
    assert_bitwise_equal,
    assert_done_units_match,
    assert_stores_equal,
    cli_run,
    done_chunk_count,
    kdcache_cmd,
    logs,
    start,
    wait_for,
)
from kdcache.cli.main import cli

from kdcache._teacher import TeacherSpec, build_teacher, target_forward
from kdcache._views import build_views
from kdcache.augment import ViewPipeline, ViewSpec
from kdcache.cache import CacheStore
from kdcache.cache._embcodec import row_cosine
from kdcache.cache._integrity import scan_cache
from kdcache.cache._targets import TargetMode, decode_targets
from kdcache.data import DataConfig
from kdcache.engine._verify import verify_cache, verify_integrity
from kdcache.errors import CacheDamagedError, ConfigError


def _replayed_embeddings(store: CacheStore, data: str, teacher: TeacherSpec) -> tuple[np.ndarray, np.ndarray]:
    """(fresh, cached) embeddings of every done view: each view rebuilt from its recorded parameters alone."""
    ds = DataConfig(source=data).open()
    model = build_teacher(teacher, num_classes=ds.num_classes).model.eval()
    forward = target_forward(model, logits=False, embedding=True)
    pipeline = ViewPipeline(ViewSpec.from_dict(store.identity.view_spec))
    fresh, cached = [], []
    for v in range(store.num_views):
        arrays = store.read_views([v] * store.num_blocks)
        idx = list(range(store.num_samples))
        views = build_views(ds, pipeline, idx, [pipeline.params_from_arrays(arrays, i) for i in idx])
        with torch.inference_mode():
            fresh.append(forward(views)[1].numpy())
        cached.append(decode_targets({k: arrays[k] for k in ("embedding", "embedding_scale") if k in arrays})
                      ["embedding"])
    return np.concatenate(fresh), np.concatenate(cached)


@pytest.mark.parametrize("targets,workers", [("full+pooled:int8", 0), ("none+pooled:float16", 2),
                                             ("topk:1+pooled:float16", 0)])
def test_embedding_of_every_view_replays_exactly_and_leaves_the_other_arrays_as_they_were(world, tmp_path, targets,
                                                                                          workers):
    out = tmp_path / "emb.zarr"
    world.dump(out, targets=targets, workers=workers)
    store = CacheStore.open(str(out))
    mode = TargetMode.parse(targets)
    assert store.attrs["kdcache_format"] == 4 and store.target_mode == mode
    assert store.layout.embedding_dim == 32  # cnn_tiny's pooled features
    assert ("embedding_scale" in store.view_array_names) == (mode.embedding == "int8")
    # The views are the reference cache's, bit for bit; so are the logits when both store them.
    ref = CacheStore.open(world.reference)
    for v in range(VIEWS):
        mine, theirs = store.read_views([v] * store.num_blocks), ref.read_views([v] * ref.num_blocks)
        for name in ref.layout.replay_names + (["logits", "argmax"] if mode.kind == "full" else []):
            assert_bitwise_equal(f"{name} (view {v})", mine[name], theirs[name])
        if mode.kind == "none":
            assert not set(ref.layout.target_names) & set(mine)
    fresh, cached = _replayed_embeddings(store, world.data, TeacherSpec(weights=world.teacher))
    biggest = np.abs(fresh).max(axis=1)
    bound = biggest * (1 / 254 if mode.embedding == "int8" else 2.0 ** -11) + 1e-6
    assert (np.abs(fresh - cached).max(axis=1) <= bound).all()
    assert row_cosine(fresh, cached).min() > (0.9999 if mode.embedding == "int8" else 0.999999)
    report = verify_cache(str(out), samples=64, device="cpu")
    assert report["ok"], report["failures"]
    assert report["embedding"]["over_tolerance"] == 0 and report["embedding"]["dim"] == 32
    assert (report["argmax_agreement"] is None) == (mode.kind == "none")


def test_verify_fails_on_a_changed_embedding_naming_the_view(world, tmp_path):
    out = tmp_path / "emb.zarr"
    world.dump(out, targets="full+pooled:float16")
    store = CacheStore.open(str(out), mode="r+")
    b0, b1 = store.block_bounds(1)
    arr = store._writable_array("embedding")
    changed = np.asarray(arr[b0:b1, 2]).copy()
    changed[3] = -changed[3] + 0.5  # a valid, checksummed chunk with other numbers: only a replay finds it
    arr[b0:b1, 2] = changed
    report = verify_cache(str(out), samples=100_000, device="cpu")
    assert not report["ok"] and report["max_abs_diff"] <= report["atol"]  # the logits are intact
    emb = report["embedding"]
    assert emb["over_tolerance"] == 1 and emb["worst"]["view"] == 2 and emb["worst"]["sample"] == b0 + 3
    assert any("embedding of 1 replayed views differs" in f for f in report["failures"]), report["failures"]


def test_a_damaged_embedding_chunk_is_named_and_the_rerun_repairs_it(world, tmp_path):
    out, clean = tmp_path / "emb.zarr", tmp_path / "clean.zarr"
    world.dump(clean, targets="full+pooled:int8")
    shutil.copytree(clean, out)
    store = CacheStore.open(str(out))
    chunk = out / store.chunk_key("embedding", store.unit_chunk("embedding", 2, 1))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    report = verify_integrity(str(out))
    assert not report["ok"]
    assert [(d["array"], d["block"], d["view"]) for d in report["damage"]] == [("embedding", 2, 1)]
    with pytest.raises(CacheDamagedError, match="embedding"):
        store.read_unit(2, 1)
    (out / store.chunk_key("embedding_scale", store.unit_chunk("embedding_scale", 0, 3))).unlink()
    assert {(d.array, d.block, d.view) for d in scan_cache(CacheStore.open(str(out))).damage} == {
        ("embedding", 2, 1), ("embedding_scale", 0, 3)}
    summary = world.dump(out, targets="full+pooled:int8")
    assert summary.units_computed == 2
    assert_stores_equal(out, clean)


@pytest.mark.slow
def test_an_embedding_dump_killed_by_sigkill_resumes_bit_identically(world, tmp_path):
    reference = tmp_path / "ref.zarr"
    world.dump(reference, targets="full+pooled:int8")
    out = tmp_path / "c.zarr"
    args = world.dump_args(out, extra=["--embed", "pooled", "--embed-dtype", "int8"])
    proc = start(kdcache_cmd(args), tmp_path, "kill")
    wait_for(lambda: done_chunk_count(out) >= world.num_units // 3, proc, what="a third of the units")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, logs(proc)
    done = assert_done_units_match(out, reference)
    assert 0 < done < world.num_units
    result = cli_run(args + ["--json"])  # the same command, in-process: the kill is what needs a process
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["units_computed"] == world.num_units - done
    assert_stores_equal(out, reference)


def _one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cli_embed_options_info_and_bad_input(world, tmp_path):
    runner = CliRunner()
    out = tmp_path / "emb.zarr"
    r = runner.invoke(cli, world.dump_args(out, extra=["--targets", "none", "--embed", "pooled"]))
    assert r.exit_code == 0, r.output
    assert "targets    none+pooled:float16" in r.output and "agreement  n/a" in r.output
    r = runner.invoke(cli, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "embedding    32 values a view, float16: 64 B per view before compression" in r.output
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["embedding"] == {"dim": 32, "dtype": "float16", "bytes_per_view": 64}
    assert info["label_agreement"] is None
    r = runner.invoke(cli, ["verify", str(out), "--device", "cpu", "--samples", "16"])
    assert r.exit_code == 0 and "embedding  32 values (float16): min cosine" in r.output, r.output
    # bad input: one line each, nothing made
    bad = tmp_path / "bad.zarr"
    assert "names an embedding already" in _one_line_error(runner.invoke(
        cli, world.dump_args(bad, extra=["--targets", "full+pooled:int8", "--embed", "pooled"])))
    assert "'none' stores nothing without an embedding" in _one_line_error(runner.invoke(
        cli, world.dump_args(bad, extra=["--targets", "none"])))
    assert "one embedding at most" in _one_line_error(runner.invoke(
        cli, world.dump_args(bad, extra=["--targets", "full+pooled:int8+pooled:float16"])))
    assert not bad.exists()
    # an embedding-only cache cannot feed logit distillation; labels-only training still works from it
    run_dir = tmp_path / "run"
    line = _one_line_error(runner.invoke(cli, world.train_args(out, run_dir)))
    assert "holds embeddings only (targets none+pooled:float16)" in line and "--distill soft" in line
    assert not run_dir.exists()
    r = runner.invoke(cli, world.train_args(out, run_dir) + ["--no-distill"])
    assert r.exit_code == 0, r.output


def test_a_logit_student_streams_only_the_logits_of_an_embedding_cache(world, tmp_path, monkeypatch):
    from kdcache.train import _stream

    out = tmp_path / "emb.zarr"
    world.dump(out, targets="full+pooled:int8", views=2)
    seen = []
    real = _stream.StreamedTargets.__init__

    def spy(self, store, views, names, plan, *a, **kw):
        seen.append(list(names))
        real(self, store, views, names, plan, *a, **kw)

    monkeypatch.setattr(_stream.StreamedTargets, "__init__", spy)
    r = CliRunner().invoke(cli, world.train_args(out, tmp_path / "run", epochs=1))
    assert r.exit_code == 0, r.output
    assert seen and all(names == ["logits", "argmax"] for names in seen)


def test_a_headless_python_teacher_stores_its_embedding_alone_and_refuses_logits(world, tmp_path, monkeypatch):
    (tmp_path / "headless_teacher.py").write_text(textwrap.dedent("""
        import torch

        class Encoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(5)
                self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.GELU(),
                                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

            def forward(self, x):
                return self.body(x)

            def forward_embedding(self, x):
                return None, self.body(x)

        def encoder(*, num_classes):
            return Encoder()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher = TeacherSpec(name="python:headless_teacher:encoder")
    out = tmp_path / "enc.zarr"
    world.dump(out, teacher=teacher, targets="none+pooled:float16", views=2)
    store = CacheStore.open(str(out))
    assert store.layout.embedding_dim == 8 and store.target_mode.kind == "none"
    report = verify_cache(str(out), samples=32, device="cpu")
    assert report["ok"], report["failures"]
    from kdcache.errors import ModelError

    with pytest.raises(ModelError, match="has no class head"):
        world.dump(tmp_path / "logits.zarr", teacher=teacher, targets="full+pooled:float16")
    assert not (tmp_path / "logits.zarr").exists()


def test_target_strings_round_trip_and_refuse_the_rest():
    for text in ("full", "topk:5", "full+pooled:int8", "topk:3+pooled:float16", "none+pooled:int8"):
        assert str(TargetMode.parse(text)) == text
    assert str(TargetMode.parse(" Full + Pooled:INT8 ")) == "full+pooled:int8"
    for bad in ("none", "full+pooled", "full+pooled:int4", "full+mean:int8", "topk:0+pooled:int8", "+pooled:int8"):
        with pytest.raises(ConfigError, match="invalid targets"):
            TargetMode.parse(bad)
