"""verify_cache / `kdcache verify`: a sound cache passes; every kind of damage is caught."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.engine._verify import FP16_ULP, MIN_ATOL, default_atol, verify_cache
from kdcache.errors import CacheMismatchError, CacheNotFoundError, ConfigError
from kdcache.models import create_model
from kdcache.models._checkpoint import load_checkpoint, save_checkpoint

N_TRAIN, VIEWS, BLOCK = 48, 2, 16   # tiny_h5 has 48 training images: 3 blocks x 2 views = 6 units
ALL = N_TRAIN * VIEWS


def _make_h5(path) -> str:
    """48 training images of 16 px, 3 classes (class c: a bright band in rows of c)."""
    rng = np.random.default_rng(0)
    labels = np.arange(N_TRAIN) % 3
    images = rng.integers(0, 80, size=(N_TRAIN, 16, 16, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 5 * c:5 * c + 5, :, c] = 230
    with h5py.File(path, "w") as f:
        f.attrs["class_names"] = ["a", "b", "c"]
        f["train/images"] = images
        f["train/labels"] = labels
    return f"hdf5:{path}"


def _dump(data: str, teacher: str, out, *, targets: str = "full", view: dict | None = None) -> str:
    cfg = DumpConfig(data=DataConfig(source=data), out=str(out), teacher=TeacherSpec(weights=teacher),
                     views=VIEWS, seed=3, targets=targets, view={"size": 16, **(view or {})}, batch_size=16,
                     workers=0, block_size=BLOCK)
    dump_teacher(cfg, progress=False, log=lambda _m: None)
    return str(out)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    """Data, teacher and one full and one top-k cache, made once; tests damage copies of the caches."""
    root = tmp_path_factory.mktemp("verify")
    torch.manual_seed(1)
    teacher = str(save_checkpoint(root / "teacher.pt", create_model("cnn_tiny", num_classes=3)))
    data = _make_h5(root / "data.h5")
    return {"data": data, "teacher": teacher, "full": _dump(data, teacher, root / "full.zarr"),
            "topk": _dump(data, teacher, root / "topk.zarr", targets="topk:2")}


@pytest.fixture
def tiny_h5(built) -> str:
    return built["data"]


@pytest.fixture
def tiny_teacher(built) -> str:
    return built["teacher"]


@pytest.fixture
def full_cache(tmp_path, built) -> str:
    return shutil.copytree(built["full"], tmp_path / "full.zarr").as_posix()


@pytest.fixture
def topk_cache(tmp_path, built) -> str:
    return shutil.copytree(built["topk"], tmp_path / "topk.zarr").as_posix()


def _verify(cache: str, data: str, teacher: str, **kw):
    return verify_cache(cache, TeacherSpec(weights=teacher), DataConfig(source=data), device="cpu", **kw)


def _zarr(cache: str) -> zarr.Group:
    return zarr.open_group(cache, mode="r+")


def _clear_done(cache: str, *sel) -> None:
    """Mark entries not done the way kdcache writes (every chunk exists, even an all-false one)."""
    _zarr(cache)["done"].with_config({"write_empty_chunks": True})[sel] = False


# ---------------------------------------------------------------- a sound cache passes
@pytest.mark.parametrize("targets,view", [("full", None), ("topk:2", None), ("topk:3", None),
                                          ("full", {"mix": "both", "mix_prob": 1.0})])
def test_sound_cache_passes(tmp_path, built, tiny_h5, tiny_teacher, targets, view):
    if view is None and targets in ("full", "topk:2"):
        cache = built["full" if targets == "full" else "topk"]
    else:
        cache = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", targets=targets, view=view)
    r = _verify(cache, tiny_h5, tiny_teacher, samples=10_000)
    assert r["ok"], r["failures"]
    assert r["failures"] == []
    assert r["samples_checked"] == ALL            # every done pair, each once
    assert r["max_abs_diff"] <= r["atol"]
    assert r["argmax_agreement"] == 1.0 and r["argmax_mismatches"] == 0
    assert r["nonfinite_targets"] == 0            # topk:3 == C: the empty tail's -inf is legitimate
    assert r["coverage"] == 1.0 and r["views_done"] == ALL
    assert r["targets"] == targets
    json.dumps(r)  # the report is JSON-safe


def test_sampling_is_seeded_and_limited(full_cache, tiny_h5, tiny_teacher):
    a = _verify(full_cache, tiny_h5, tiny_teacher, samples=5, seed=1)
    b = _verify(full_cache, tiny_h5, tiny_teacher, samples=5, seed=1)
    c = _verify(full_cache, tiny_h5, tiny_teacher, samples=5, seed=2)
    assert a["samples_checked"] == 5 and a["ok"]
    assert a["worst"] == b["worst"] and a["max_abs_diff"] == b["max_abs_diff"]
    assert (a["worst"], a["max_abs_diff"]) != (c["worst"], c["max_abs_diff"])


def test_default_tolerance_is_one_fp16_ulp_with_a_floor():
    assert FP16_ULP == 2.0 ** -10
    assert default_atol(0.5) == MIN_ATOL
    assert default_atol(100.0) == pytest.approx(100.0 / 1024)


def test_explicit_zero_tolerance_exposes_fp16_rounding(full_cache, tiny_h5, tiny_teacher):
    r = _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL, atol=0.0)
    assert not r["ok"]
    assert 0.0 < r["max_abs_diff"] <= default_atol(1.0)
    assert any("differs from the cache" in f for f in r["failures"])


# ---------------------------------------------------------------- wrong teacher or data
def test_perturbed_teacher_weights_are_refused(tmp_path, full_cache, tiny_h5, tiny_teacher):
    model, _ = load_checkpoint(tiny_teacher)
    with torch.no_grad():
        model.fc.bias.add_(0.5)
    other = save_checkpoint(tmp_path / "perturbed.pt", model)
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        _verify(full_cache, tiny_h5, str(other))


def test_other_architecture_is_refused(tmp_path, full_cache, tiny_h5):
    other = save_checkpoint(tmp_path / "small.pt", create_model("cnn_small", num_classes=3))
    with pytest.raises(CacheMismatchError, match="name"):
        _verify(full_cache, tiny_h5, str(other))


def test_other_data_is_refused(full_cache, tiny_h5, tiny_teacher):
    with pytest.raises(CacheMismatchError, match="manifest_sha256"):
        verify_cache(full_cache, TeacherSpec(weights=tiny_teacher), DataConfig(source=tiny_h5, limit=30))


def test_bad_arguments(full_cache, tmp_path, tiny_h5, tiny_teacher):
    with pytest.raises(ConfigError):
        _verify(full_cache, tiny_h5, tiny_teacher, samples=0)
    with pytest.raises(ConfigError):
        _verify(full_cache, tiny_h5, tiny_teacher, atol=-1.0)
    with pytest.raises(CacheNotFoundError):
        _verify(str(tmp_path / "missing.zarr"), tiny_h5, tiny_teacher)


# ---------------------------------------------------------------- damaged caches
def test_wrong_cached_logit_is_caught(full_cache, tiny_h5, tiny_teacher):
    g = _zarr(full_cache)
    g["logits"][21, 1, 0] = np.float16(g["logits"][21, 1, 0] + 3.0)
    r = _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL)
    assert not r["ok"]
    assert r["max_abs_diff"] == pytest.approx(3.0, abs=0.05)
    assert r["worst"]["sample"] == 21 and r["worst"]["view"] == 1 and r["worst"]["key"] == "train/21"
    assert r["nonfinite_targets"] == 0


def test_nan_is_found_by_the_full_scan_even_when_not_sampled(full_cache, tiny_h5, tiny_teacher):
    g = _zarr(full_cache)
    g["logits"][40, 0, 2] = np.nan
    g["logits"][3, 1, 1] = np.inf
    r = _verify(full_cache, tiny_h5, tiny_teacher, samples=1, seed=0)
    assert r["samples_checked"] == 1
    assert r["nonfinite_targets"] == 2
    assert not r["ok"] and any("NaN/Inf" in f for f in r["failures"])


@pytest.mark.parametrize("array", ["topk_steps", "topk_indices", "topk_tail"])
def test_damaged_topk_targets_are_caught(topk_cache, tiny_h5, tiny_teacher, array):
    g = _zarr(topk_cache)
    if array == "topk_indices":
        idx = g[array][10, 0]
        g[array][10, 0] = np.array([idx[1], idx[0]], dtype=idx.dtype)  # values now sit at the wrong classes
    elif array == "topk_steps":  # the second logit two logits further below the top (32 steps of 1/16)
        g[array][10, 0] = g[array][10, 0] + np.uint16(32)
    else:
        g[array][10, 0] = g[array][10, 0] - np.float16(2.0)
    r = _verify(topk_cache, tiny_h5, tiny_teacher, samples=ALL)
    assert not r["ok"]
    assert r["max_abs_diff"] > r["atol"]
    assert (r["worst"]["sample"], r["worst"]["view"]) == (10, 0)


def test_topk_index_out_of_range_is_caught(topk_cache, tiny_h5, tiny_teacher):
    g = _zarr(topk_cache)
    g["topk_indices"][2, 1, 0] = 200
    r = _verify(topk_cache, tiny_h5, tiny_teacher, samples=ALL)
    assert not r["ok"] and r["max_abs_diff"] == float("inf")


def test_views_are_rebuilt_from_recorded_parameters(full_cache, tiny_h5, tiny_teacher):
    """Change the recorded crops of one unit: the replayed views change, so the teacher disagrees."""
    g = _zarr(full_cache)
    crops = np.asarray(g["crop"][16:32, 1])
    g["crop"][16:32, 1] = np.tile(np.array([0, 0, 4, 4], dtype=crops.dtype), (16, 1))
    r = _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL)
    assert not r["ok"]
    assert 16 <= r["worst"]["sample"] < 32 and r["worst"]["view"] == 1
    g["crop"][16:32, 1] = crops
    assert _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL)["ok"]


def test_wrong_cached_argmax_is_caught(full_cache, tiny_h5, tiny_teacher):
    g = _zarr(full_cache)
    g["argmax"][7, 0] = (int(g["argmax"][7, 0]) + 1) % 3
    r = _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL)
    assert not r["ok"]
    assert r["max_abs_diff"] <= r["atol"]
    assert r["argmax_mismatches"] == 1 and r["argmax_agreement"] == pytest.approx(1 - 1 / ALL)


def test_incomplete_coverage(full_cache, tiny_h5, tiny_teacher):
    _clear_done(full_cache, slice(16, 32), 1)
    r = _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL)
    assert r["coverage"] == pytest.approx(1 - 16 / ALL)
    assert r["samples_checked"] == ALL - 16           # only done pairs are sampled
    assert not r["ok"] and any("coverage" in f for f in r["failures"])
    assert _verify(full_cache, tiny_h5, tiny_teacher, samples=ALL, allow_incomplete=True)["ok"]


def test_nothing_done_fails_even_when_incomplete_is_allowed(full_cache, tiny_h5, tiny_teacher):
    _clear_done(full_cache, slice(None))
    r = _verify(full_cache, tiny_h5, tiny_teacher, allow_incomplete=True)
    assert r["samples_checked"] == 0 and r["max_abs_diff"] is None
    assert not r["ok"] and any("no completed views" in f for f in r["failures"])


# ---------------------------------------------------------------- CLI
def _cli(*args):
    return CliRunner().invoke(cli, ["verify", *args])


def test_cli_verify_ok_and_json(full_cache, tiny_h5, tiny_teacher):
    res = _cli(full_cache, "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "max diff" in res.output and res.output.strip().endswith("ok")
    res = _cli(full_cache, "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--device", "cpu",
               "--samples", "7", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["ok"] and r["samples_checked"] == 7


def test_cli_verify_fails_on_damage_and_incomplete(full_cache, tiny_h5, tiny_teacher):
    g = _zarr(full_cache)
    _clear_done(full_cache, slice(0, 16), 0)
    args = [full_cache, "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--device", "cpu"]
    res = _cli(*args)
    assert res.exit_code == 1
    assert "verification failed" in res.output and "coverage" in res.output
    assert _cli(*args, "--allow-incomplete").exit_code == 0
    g["logits"][20, 1, 2] = np.float16(50.0)
    res = _cli(*args, "--allow-incomplete", "--json")
    assert res.exit_code == 1 and "differs from the cache" in res.output


def test_cli_verify_bad_input(tmp_path, full_cache, tiny_h5, tiny_teacher):
    res = _cli(str(tmp_path / "nope.zarr"), "--data", tiny_h5, "--teacher-weights", tiny_teacher)
    assert res.exit_code == 1
    assert "cache not found" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1

    model, _ = load_checkpoint(tiny_teacher)
    with torch.no_grad():
        model.fc.weight.mul_(1.01)
    other = save_checkpoint(tmp_path / "perturbed.pt", model)
    res = _cli(full_cache, "--data", tiny_h5, "--teacher-weights", str(other), "--device", "cpu")
    assert res.exit_code == 1
    assert "weights_sha256" in res.output and "Traceback" not in res.output

    res = _cli(full_cache, "--data", tiny_h5, "--teacher-weights", tiny_teacher, "--samples", "0")
    assert res.exit_code == 2  # click usage error


def test_cli_verify_defaults_to_the_data_recorded_in_the_cache(tmp_path, full_cache, tiny_h5, tiny_teacher):
    res = _cli(full_cache, "--teacher-weights", tiny_teacher, "--device", "cpu", "--samples", "4")
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("ok")
    # --split alone overrides one field of the recorded data: another split is other data.
    res = _cli(full_cache, "--teacher-weights", tiny_teacher, "--device", "cpu", "--split", "test")
    assert res.exit_code == 1 and "split" in res.output and "Traceback" not in res.output
    # Recorded data that moved: one line that says where the path came from and what to pass.
    moved = tmp_path / "moved.zarr"
    shutil.copytree(full_cache, moved)
    data_file = tiny_h5.split(":", 1)[1]
    os.rename(data_file, data_file + ".away")
    try:
        res = _cli(str(moved), "--teacher-weights", tiny_teacher, "--device", "cpu")
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and "Traceback" not in res.output
        assert "recorded in the cache" in lines[0] and "--data" in lines[0]
        res = _cli(str(moved), "--data", "hdf5:" + data_file + ".away", "--teacher-weights", tiny_teacher,
                   "--device", "cpu", "--samples", "4")
        assert res.exit_code == 0, res.output
    finally:
        os.rename(data_file + ".away", data_file)
