"""Several teachers over one cache's views (``kdcache add-teacher``, format 5).

The contract: an added teacher's targets are exactly what a dump of that teacher with the cache's seed and
views would have stored (the views are replayed from the recorded parameters, never drawn anew), bit for bit;
adding one never changes a byte of the main cache; it resumes after kill -9, names and repairs damage in its
own arrays without touching the main cache; it follows views added to the cache later; a name means one
teacher. ``verify --name`` replays its views, ``info`` lists it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from engine_support import (
    BATCH,
    VIEWS,
    assert_bitwise_equal,
    cli_run,
    helper_env,
    kdcache_cmd,
    logs,
    run,
    start,
    torchrun_cmd,
    tree_digest,
    wait_for,
)
from kdcache.cli.main import cli

from kdcache._teacher import TeacherSpec
from kdcache.cache import CacheStore
from kdcache.cache._teachers import open_teacher, teacher_names
from kdcache.engine import AddTeacherConfig, add_teacher
from kdcache.engine._verify import verify_cache, verify_integrity
from kdcache.errors import CacheDamagedError, CacheMismatchError, ConfigError

TARGETS = ("logits", "argmax")


@pytest.fixture(scope="module")
def second(world, tmp_path_factory) -> dict[str, str]:
    """A second teacher (cnn_tiny, other weights) and the cache a dump of it with the world's views makes."""
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("second")
    torch.manual_seed(2)
    save_checkpoint(str(root / "t2.pt"), create_model("cnn_tiny", num_classes=2))
    direct = str(root / "direct.zarr")
    world.dump(direct, teacher=TeacherSpec(weights=str(root / "t2.pt")), targets="full+pooled:int8")
    return {"weights": str(root / "t2.pt"), "direct": direct}


def _copy(world, tmp_path: Path, src: str | None = None) -> str:
    out = tmp_path / "c.zarr"
    shutil.copytree(src or world.reference, out)
    return str(out)


def _add(cache: str, weights: str, name: str = "t2", targets: str = "full", **kw):
    cfg = AddTeacherConfig(cache=cache, name=name, teacher=TeacherSpec(weights=weights), targets=targets,
                           batch_size=BATCH, workers=kw.pop("workers", 0), device="cpu", **kw)
    return add_teacher(cfg, progress=False, log=lambda _m: None)


def _main_digest(cache: str) -> dict[str, str]:
    return {k: v for k, v in tree_digest(cache).items() if not k.startswith("teachers")}


def _assert_targets_equal(cache: str, direct: str, names=TARGETS, name: str = "t2") -> None:
    """The added teacher's arrays equal a direct dump's, view by view, bit for bit."""
    t = open_teacher(CacheStore.open(cache), name)
    d = CacheStore.open(direct)
    assert t.num_views == d.num_views and t.done().all()
    for v in range(t.num_views):
        mine, theirs = t.read_views([v] * t.num_blocks, names), d.read_views([v] * d.num_blocks, names)
        for n in names:
            assert_bitwise_equal(f"{n} view {v}", mine[n], theirs[n])


@pytest.mark.parametrize("targets,workers", [("full", 0), ("full+pooled:int8", 2)])
def test_an_added_teacher_holds_what_a_dump_of_it_would_and_the_cache_is_untouched(world, second, tmp_path,
                                                                                   targets, workers):
    cache = _copy(world, tmp_path)
    before = _main_digest(cache)
    s = _add(cache, second["weights"], targets=targets, workers=workers)
    assert s.units_computed == world.num_units and s.done_fraction == 1.0
    assert _main_digest(cache) == before  # not a byte of the main cache changed
    names = TARGETS + (("embedding", "embedding_scale") if "pooled" in targets else ())
    _assert_targets_equal(cache, second["direct"], names)
    root = CacheStore.open(cache)
    t = open_teacher(root, "t2")
    assert t.attrs["kdcache_format"] == 5 and root.attrs["kdcache_format"] == 3
    assert t.attrs["views_of"] == root.identity.fingerprint and t.view_array_names == list(names)
    assert teacher_names(cache) == ["main", "t2"]
    r = verify_cache(cache, name="t2", device="cpu", samples=32)
    assert r["ok"] and r["samples_checked"] == 32 and r["argmax_agreement"] == 1.0, r["failures"]
    # the main teacher's own check is unchanged by the added one
    assert verify_cache(cache, device="cpu", samples=8)["ok"]
    # a rerun has nothing to do
    assert _add(cache, second["weights"], targets=targets).units_computed == 0


def test_add_teacher_cli_info_verify_and_bad_input(world, second, tmp_path):
    cache = _copy(world, tmp_path)
    runner = CliRunner()
    args = ["add-teacher", cache, "--name", "t2", "--teacher-weights", second["weights"], "--device", "cpu",
            "--workers", "0", "--no-progress"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "teacher    t2" in r.output and "coverage   100.0% done" in r.output
    info = json.loads(runner.invoke(cli, ["info", cache, "--json"]).output)
    assert [t["name"] for t in info["teachers"]] == ["main", "t2"]
    assert info["teachers"][1]["targets"] == "full" and info["teachers"][1]["views_done"] == 128 * VIEWS
    text = runner.invoke(cli, ["info", cache]).output
    assert "added        teacher 't2': cnn_tiny" in text and "100.0% of the views" in text
    r = runner.invoke(cli, ["verify", cache, "--name", "t2", "--device", "cpu", "--samples", "16"])
    assert r.exit_code == 0 and r.output.strip().endswith("ok"), r.output
    before = tree_digest(cache)
    for bad, want in [
        (["--name", "main"], "is the cache's own teacher"),
        (["--name", "a/b"], "teacher name 'a/b'"),
        (["--name", "t2", "--random-init"], "exists and is another teacher"),  # one name, one teacher
        (["--name", "t2", "--targets", "topk:1"], "exists and is another teacher"),
    ]:
        argv = ["add-teacher", cache, *bad, "--device", "cpu", "--workers", "0", "--no-progress"]
        if "--random-init" not in bad:
            argv += ["--teacher-weights", second["weights"]]
        else:
            argv += ["--teacher", "cnn_tiny"]
        line = _one_line_error(runner.invoke(cli, argv))
        assert want in line, line
    assert tree_digest(cache) == before  # nothing changed by the refusals
    line = _one_line_error(runner.invoke(cli, ["verify", cache, "--name", "t9", "--device", "cpu"]))
    assert "has no teacher 't9' (its teachers: main, t2)" in line


def _one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _chunk(cache: str, name: str, array: str, block: int, view: int) -> Path:
    p = Path(cache) / "teachers" / name / array / "c" / str(block) / str(view)
    return p / "0" if p.is_dir() else p  # (N, V, C) arrays: one more chunk coordinate


def test_damage_in_an_added_teacher_is_named_and_repaired_without_touching_the_cache(world, second, tmp_path):
    cache = _copy(world, tmp_path)
    _add(cache, second["weights"])
    before = _main_digest(cache)
    lost = _chunk(cache, "t2", "logits", 1, 2)
    lost.unlink()
    flipped = _chunk(cache, "t2", "argmax", 3, 0)
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    flipped.write_bytes(bytes(raw))
    r = verify_integrity(cache)
    assert not r["ok"] and r["damage"] == r["teachers"]["t2"]["damage"]
    where = {(d["array"], d["block"], d["view"], d["problem"]) for d in r["damage"]}
    assert where == {("logits", 1, 2, "missing"), ("argmax", 3, 0, "corrupt")}, where
    assert all("teachers/t2/" in d["message"] for d in r["damage"])
    with pytest.raises(CacheDamagedError, match="teachers/t2/logits"):
        open_teacher(CacheStore.open(cache), "t2").read_unit(1, 2)
    s = _add(cache, second["weights"])
    assert s.units_computed == 2  # exactly the two damaged units
    assert _main_digest(cache) == before
    _assert_targets_equal(cache, second["direct"])
    assert verify_integrity(cache)["ok"]


@pytest.mark.slow
def test_add_teacher_killed_by_sigkill_resumes_bit_identically(world, second, tmp_path):
    cache = _copy(world, tmp_path)
    args = ["add-teacher", cache, "--name", "t2", "--teacher-weights", second["weights"],
            "--batch-size", str(BATCH), "--device", "cpu", "--workers", "0", "--no-progress"]
    proc = start(kdcache_cmd(args), tmp_path, "kill")

    def units_done() -> int:
        try:
            return int(open_teacher(CacheStore.open(cache), "t2").done_units().sum())
        except Exception:  # noqa: BLE001 - not created yet
            return 0

    wait_for(lambda: units_done() >= world.num_units // 3, proc, what="a third of the units", interval=0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, logs(proc)
    done = units_done()
    assert 0 < done < world.num_units
    t, d = open_teacher(CacheStore.open(cache), "t2"), CacheStore.open(second["direct"])
    for b, v in zip(*np.nonzero(t.done_units())):  # what was marked done holds the right bytes
        for n in TARGETS:
            assert_bitwise_equal(n, t.read_unit(int(b), int(v), [n])[n], d.read_unit(int(b), int(v), [n])[n])
    result = cli_run(args + ["--json"])  # the same command, in-process: the kill is what needs a process
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["units_computed"] == world.num_units - done
    _assert_targets_equal(cache, second["direct"])


def test_an_added_teacher_follows_views_added_to_the_cache(world, second, two_view_cache, tmp_path):
    cache = _copy(world, tmp_path, two_view_cache)
    assert _add(cache, second["weights"]).units_computed == world.num_units // 2
    world.dump(cache, views=None, add_views=VIEWS - 2)
    root = CacheStore.open(cache)
    assert root.num_views == VIEWS and open_teacher(root, "t2").num_views == 2
    s = _add(cache, second["weights"])
    assert s.units_computed == world.num_units // 2 and s.num_views == VIEWS
    _assert_targets_equal(cache, second["direct"])


def test_a_teacher_is_added_while_a_student_reads_the_cache(world, second, tmp_path):
    cache = _copy(world, tmp_path)
    student = subprocess.Popen(kdcache_cmd(world.train_args(cache, tmp_path / "run", epochs=3, steps=6)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        s = _add(cache, second["weights"])
        out, _ = student.communicate(timeout=240)
    finally:
        student.kill()
    assert student.returncode == 0, out
    assert s.units_computed == world.num_units
    _assert_targets_equal(cache, second["direct"])


def test_a_teacher_group_of_other_views_is_refused(world, second, tmp_path):
    cache = _copy(world, tmp_path)
    other = tmp_path / "other.zarr"
    world.dump(other, seed=99)  # other views: another seed
    _add(str(other), second["weights"])
    # a teacher group copied in from another cache: named, never read as this cache's
    (Path(cache) / "teachers").mkdir()
    shutil.copytree(other / "teachers" / "t2", Path(cache) / "teachers" / "t2")
    shutil.copy(other / "teachers" / "zarr.json", Path(cache) / "teachers" / "zarr.json")
    root = CacheStore.open(cache)
    with pytest.raises(CacheMismatchError, match="teacher 't2' .* does not belong to this cache: its views are "
                                                 "those of cache"):
        open_teacher(root, "t2")
    line = _one_line_error(CliRunner().invoke(cli, ["add-teacher", cache, "--name", "t2", "--teacher-weights",
                                                    second["weights"], "--device", "cpu", "--workers", "0"]))
    assert "does not belong to this cache" in line


def test_names_are_checked(world, tmp_path):
    with pytest.raises(ConfigError, match="'main' is the cache's own teacher"):
        _add(_copy(world, tmp_path), world.teacher, name="main")
    with pytest.raises(ConfigError, match="teacher name"):
        _add(_copy(world, tmp_path / "x"), world.teacher, name="x.locks")



def test_export_writes_each_added_teacher_as_its_own_group(world, second, tmp_path):
    import h5py

    from kdcache.cache._export import export_hdf5, read_hdf5_attrs

    cache = _copy(world, tmp_path)
    _add(cache, second["weights"], targets="full+pooled:int8")
    s = export_hdf5(cache, tmp_path / "c.h5")
    assert s["teachers"] == ["t2"]
    t = open_teacher(CacheStore.open(cache), "t2")
    with h5py.File(tmp_path / "c.h5") as f:
        assert np.array_equal(f["logits"][...], CacheStore.open(cache).array("logits")[...])  # main's, as before
        for name in ("logits", "argmax", "embedding", "embedding_scale", "done"):
            assert_bitwise_equal(name, f[f"teachers/t2/{name}"][...], np.asarray(t.array(name)[...]))
        attrs = read_hdf5_attrs(f["teachers/t2"])
        assert attrs["views_of"] == CacheStore.open(cache).identity.fingerprint and attrs["teacher_name"] == "t2"


@pytest.mark.slow
def test_torchrun_add_teacher_equals_the_single_process_one(world, second, tmp_path):
    cache = _copy(world, tmp_path)
    args = ["add-teacher", cache, "--name", "t2", "--teacher-weights", second["weights"], "--targets", "full",
            "--embed", "pooled", "--embed-dtype", "int8", "--batch-size", str(BATCH), "--device", "cpu",
            "--workers", "0", "--no-progress", "--json"]
    result = run(torchrun_cmd(2, args), env=helper_env())
    assert result.returncode == 0, result.stdout + result.stderr
    s = json.loads(result.stdout[result.stdout.index("{"):])  # rank 0's summary only
    assert s["units_computed"] == world.num_units and s["done_fraction"] == 1.0
    _assert_targets_equal(cache, second["direct"], TARGETS + ("embedding", "embedding_scale"))


def test_a_teacher_of_another_normalisation_gets_the_cache_views_renormalised(world, tmp_path):
    """cifar_resnet20 expects ImageNet's mean/std, the cache's views are normalised with cnn_tiny's: the added
    teacher's targets are those of a dump of it with its own normalisation over the same pixels."""
    cache = _copy(world, tmp_path)
    r20 = TeacherSpec(name="cifar_resnet20", random_init=True, init_seed=4)
    logs: list[str] = []
    add_teacher(AddTeacherConfig(cache=cache, name="r20", teacher=r20, batch_size=BATCH, workers=0, device="cpu"),
                progress=False, log=logs.append)
    root = CacheStore.open(cache)
    assert any("renormalised to its own mean 0.485 0.456 0.406" in m for m in logs), logs
    direct = tmp_path / "direct.zarr"
    world.dump(direct, teacher=r20)  # the same seed and ops: the same pixels, normalised as r20 expects
    d = CacheStore.open(str(direct))
    assert d.identity.view_spec["mean"] != root.identity.view_spec["mean"]
    t = open_teacher(root, "r20")
    for v in range(VIEWS):
        mine, theirs = t.read_views([v] * t.num_blocks, ["logits"]), d.read_views([v] * d.num_blocks, ["logits"])
        np.testing.assert_allclose(mine["logits"].astype(np.float32), theirs["logits"].astype(np.float32),
                                   atol=2e-2, rtol=1e-3)
    r = verify_cache(cache, name="r20", device="cpu", samples=32)  # verify renormalises the same way
    assert r["ok"] and r["max_abs_diff"] < r["atol"], r["failures"]


def test_hugging_face_backbone_without_a_head_as_an_embedding_teacher(world, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64)
    backbone = tmp_path / "vit"
    transformers.ViTModel(config).save_pretrained(backbone)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(backbone)
    runner = CliRunner()
    base = ["add-teacher", "--name", "vit", "--teacher", f"hf:{backbone}", "--device", "cpu", "--workers", "0",
            "--no-progress"]
    # the world's cache has 64-px views: a 32-px ViT cannot take them, and they are never resized for it
    line = _one_line_error(runner.invoke(cli, [base[0], _copy(world, tmp_path / "a"), *base[1:], "--teacher-arg",
                                               "headless=true", "--targets", "none", "--embed", "pooled"]))
    assert "cannot run on the cache's 64-px views" in line and "never resized" in line
    cache = str(tmp_path / "c32.zarr")
    world.dump(cache, view={"size": 32})
    # loaded as a classifier, its head would be random: refused by name
    line = _one_line_error(runner.invoke(cli, [base[0], cache, *base[1:]]))
    assert "weights are not in the checkpoint and would be random (classifier.bias" in line and "headless" in line
    # headless: logits asked for are refused; the embedding alone is stored and replays
    line = _one_line_error(runner.invoke(cli, [base[0], cache, *base[1:], "--teacher-arg", "headless=true"]))
    assert "without a class head" in line
    r = runner.invoke(cli, [base[0], cache, *base[1:], "--teacher-arg", "headless=true", "--targets", "none",
                            "--embed", "pooled"])
    assert r.exit_code == 0, r.output
    t = open_teacher(CacheStore.open(cache), "vit")
    assert t.target_mode.embedding == "float16" and t.layout.embedding_dim == 32 and not t.target_mode.has_logits
    rep = verify_cache(cache, name="vit", device="cpu", samples=32)
    assert rep["ok"] and rep["embedding"]["min_cosine"] > 0.999, rep["failures"]


def test_a_teacher_that_gives_nan_leaves_no_group_and_the_cache_untouched(world, tmp_path):
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    cache = _copy(world, tmp_path)
    before = tree_digest(cache)
    model = create_model("cnn_tiny", num_classes=2)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(str(tmp_path / "nan.pt"), model)
    line = _one_line_error(CliRunner().invoke(cli, ["add-teacher", cache, "--name", "bad", "--teacher-weights",
                                                    str(tmp_path / "nan.pt"), "--device", "cpu", "--workers", "0",
                                                    "--no-progress"]))
    assert "NaN/Inf logits" in line and "nothing was computed, so" in line and "teachers/bad was removed" in line
    assert not (Path(cache) / "teachers" / "bad").exists() and teacher_names(cache) == ["main"]
    assert {k: v for k, v in tree_digest(cache).items() if not k.startswith("teachers")} == before
