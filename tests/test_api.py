"""The public API: ``kdcache.__all__``, ``open_cache``/``CacheDataset`` and ``DistillationLoss`` on its own.

The central test replays through the public Dataset exactly as a user's loop would (a DataLoader
with two workers and a DistributedSampler for each of two ranks) and runs the cache's teacher on
the views it yields: the teacher must reproduce the targets the Dataset yields with them, within
``verify``'s float16 tolerance, and the views must be the ones ``train-student`` picks.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

import kdcache
from kdcache.cache._targets import TOPK_STEP
from kdcache.engine._verify import default_atol

BLOCK = 16


def _dump(data: str, teacher: str, out, *, mix: str = "none", targets: str = "full", views: int = 3,
          view: dict | None = None) -> str:
    cfg = kdcache.DumpConfig(data=kdcache.DataConfig(source=data), out=str(out),
                             teacher=kdcache.TeacherSpec(weights=teacher), views=views, seed=7,
                             targets=targets, view={"size": 16, "mix": mix, **(view or {})}, batch_size=8, workers=0,
                             block_size=BLOCK)
    kdcache.dump_teacher(cfg, progress=False, log=lambda _m: None)
    return str(out)


# ---------------------------------------------------------------------- the public surface
def test_every_public_name_resolves_and_is_documented():
    assert len(set(kdcache.__all__)) == len(kdcache.__all__)
    for name in kdcache.__all__:
        obj = getattr(kdcache, name)
        if name == "__version__":
            continue
        assert inspect.getdoc(obj), f"kdcache.{name} has no docstring"
        module = getattr(obj, "__module__", "")
        assert module.startswith("kdcache."), (name, module)
    namespace: dict = {}
    exec("from kdcache import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} == set(kdcache.__all__) - {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kdcache.nope  # noqa: B018


def test_internal_modules_are_underscored_and_packages_export_their_public_names():
    """The public surface is ``kdcache.__all__``, the subpackages' ``__all__`` and ``kdcache.errors``;
    every other module is internal and says so with a leading underscore."""
    import importlib
    import pathlib

    root = pathlib.Path(kdcache.__file__).parent
    public_modules = {"__init__.py", "__main__.py", "errors.py"}
    exposed = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if p.name not in public_modules and not p.name.startswith("_"))
    assert not exposed, f"internal modules without a leading underscore: {exposed}"
    packages = sorted({p.parent for p in root.rglob("__init__.py")} - {root})
    assert packages, "no subpackages found"
    for pkg in packages:
        mod = importlib.import_module("kdcache." + ".".join(pkg.relative_to(root).parts))
        assert mod.__all__, mod.__name__
        for name in mod.__all__:
            assert not name.startswith("_") and hasattr(mod, name), (mod.__name__, name)


def test_public_callables_are_typed():
    for name in kdcache.__all__:
        obj = getattr(kdcache, name)
        fn = obj.__init__ if inspect.isclass(obj) else obj
        if not callable(fn) or inspect.isclass(obj) and issubclass(obj, Exception):
            continue
        if inspect.isclass(obj) and "__init__" not in vars(obj):
            continue  # dataclass-generated or inherited constructors carry their fields' annotations
        sig = inspect.signature(fn)
        untyped = [p for p in sig.parameters if p not in ("self", "args", "kwargs")
                   and sig.parameters[p].annotation is inspect.Parameter.empty]
        assert not untyped, f"kdcache.{name}: parameters without type hints: {untyped}"


def test_import_kdcache_stays_cheap():
    """Public names load on first use: importing the package (and its errors), the subpackages and the configs
    loads neither torch nor zarr; a name no package has is an AttributeError naming the package."""
    code = ("import sys, kdcache, kdcache.errors, kdcache.augment, kdcache.cache, kdcache.data, kdcache.train\n"
            "from kdcache.train import TrainConfig, LossConfig\nfrom kdcache.data import DataConfig\n"
            "from kdcache.augment import ViewSpec, PRESETS\nfrom kdcache import TeacherSpec\n"
            "print(sorted({'torch', 'zarr'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    for pkg in (kdcache, kdcache.augment, kdcache.cache, kdcache.data, kdcache.train):
        with pytest.raises(AttributeError, match=f"module '{pkg.__name__}' has no attribute 'no_such_name'"):
            pkg.no_such_name  # noqa: B018
        assert set(pkg.__all__) <= set(dir(pkg))


# ---------------------------------------------------------------------- CacheDataset
def _ranks_epoch(ds: kdcache.CacheDataset, epoch: int, *, batch_size: int = 5, workers: int = 2):
    """Batches of both ranks of a 2-process DistributedSampler for ``epoch``."""
    ds.set_epoch(epoch)
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(epoch)
        yield from DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)


_STRONG = {"crop": "pad", "padding": 2, "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.5, "remode": "pixel"}


@pytest.mark.parametrize("mix,targets,view", [("none", "full", None), ("both", "topk:2", None),
                                              ("both", "full", _STRONG)])
def test_dataset_replays_what_the_teacher_saw_through_workers_and_ranks(tmp_path, tiny_h5, tiny_teacher, mix,
                                                                        targets, view):
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr", mix=mix, targets=targets, view=view)
    store = kdcache.open_cache(path)
    teacher = kdcache.load_checkpoint(tiny_teacher)[0].eval()
    replay = store.layout.replay_names
    labels = store.labels
    ds = kdcache.CacheDataset(path, tiny_h5, seed=5)
    seen_views = []
    for epoch in (0, 1, 2):
        picked = kdcache.epoch_views(store.done_units(), epoch=epoch, seed=5)  # train-student's choice
        seen_views.append(picked.tolist())
        params = store.read_views(picked, names=replay)
        covered = set()
        for batch in _ranks_epoch(ds, epoch):
            idx = batch["index"].numpy()
            covered.update(idx.tolist())
            assert (batch["view"].numpy() == picked[idx // BLOCK]).all()
            with torch.inference_mode():
                fresh = teacher(batch["image"])
            t = batch["targets"]
            assert torch.equal(t["argmax"], fresh.argmax(1))
            tol = default_atol(float(fresh.abs().max()))
            if targets == "full":
                cached = t["logits"]
                fresh_at = fresh
            else:  # quantised, relative to the top logit
                cached = t["topk_values"]
                fresh_at = fresh.gather(1, t["topk_indices"])
                fresh_at = fresh_at - fresh_at[:, :1]
                tol += TOPK_STEP / 2
                assert torch.equal(t["topk_indices"], fresh.topk(2, dim=1).indices)
            assert float((fresh_at - cached).abs().max()) <= tol
            # labels: one-hot, or lam-mixed with the recorded partner's label
            expect = F.one_hot(torch.as_tensor(labels[idx]), store.num_classes).float()
            if mix != "none":
                mixed = params["mix_kind"][idx] > 0
                lam = torch.as_tensor(np.where(mixed, params["mix_lam"][idx], 1.0), dtype=torch.float32)
                lam = lam[:, None]
                partner = F.one_hot(torch.as_tensor(labels[np.where(mixed, params["mix_partner"][idx], idx)]),
                                    store.num_classes).float()
                expect = lam * expect + (1 - lam) * partner
            assert torch.allclose(batch["label"], expect)
        assert covered == set(range(store.num_samples))  # the two ranks together cover the epoch
    assert len({tuple(v) for v in seen_views}) > 1  # epochs really train on different views
    if mix != "none":
        assert (store.array("mix_kind")[:] > 0).any()


def test_another_views_targets_would_not_match(tmp_path, tiny_h5, tiny_teacher):
    """Guards the test above: the teacher on a view of another epoch does not reproduce these targets."""
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr")
    ds = kdcache.CacheDataset(path, tiny_h5, seed=5)
    teacher = kdcache.load_checkpoint(tiny_teacher)[0].eval()
    items = [ds[i] for i in range(len(ds))]
    other = next(e for e in range(1, 10) if not np.array_equal(
        kdcache.epoch_views(kdcache.open_cache(path).done_units(), epoch=e, seed=5), ds.views))
    ds.set_epoch(other)
    with torch.inference_mode():
        fresh = teacher(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    cached = torch.stack([it["targets"]["logits"] for it in items])
    assert float((fresh - cached).abs().max()) > default_atol(float(fresh.abs().max()))


def test_items_never_read_the_store(tmp_path, tiny_h5, tiny_teacher):
    """set_epoch reads the epoch in this process; items (in forked workers too) need no store at all."""
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr")
    ds = kdcache.CacheDataset(path, tiny_h5)
    before = ds[7]
    os.rename(path, tmp_path / "moved.zarr")
    n = sum(len(b["index"]) for b in DataLoader(ds, batch_size=8, num_workers=2))
    assert n == len(ds) and torch.equal(ds[7]["image"], before["image"])
    ds.set_epoch(0)  # the current epoch again: nothing to read
    with pytest.raises(kdcache.CacheNotFoundError):
        ds.set_epoch(1)
    other = kdcache.DumpConfig(data=kdcache.DataConfig(source=tiny_h5), out=path,
                               teacher=kdcache.TeacherSpec(weights=tiny_teacher), views=2, seed=8,
                               view={"size": 16}, batch_size=8, workers=0, block_size=BLOCK)
    kdcache.dump_teacher(other, progress=False, log=lambda _m: None)  # another cache at the same path
    with pytest.raises(kdcache.CacheMismatchError, match="replaced"):
        ds.set_epoch(1)


def test_data_sources_and_refusals(tmp_path, tiny_h5, tiny_teacher):
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr")
    store = kdcache.open_cache(path)
    recorded = kdcache.CacheDataset(store)  # the data the dump recorded
    for data in (tiny_h5, kdcache.DataConfig(source=tiny_h5), kdcache.open_dataset(tiny_h5)):
        other = kdcache.CacheDataset(path, data)
        assert torch.equal(other[3]["image"], recorded[3]["image"])
    plain = kdcache.CacheDataset(path, tiny_h5, targets=False)
    assert "targets" not in plain[0] and torch.equal(plain[0]["label"], recorded[0]["label"])
    with pytest.raises(kdcache.CacheMismatchError, match="manifest"):
        kdcache.CacheDataset(path, kdcache.DataConfig(source=tiny_h5, split="test"))
    with pytest.raises(kdcache.ConfigError, match="epoch"):
        recorded.set_epoch(-1)
    with pytest.raises(kdcache.ConfigError, match="data"):
        kdcache.CacheDataset(path, 42)  # type: ignore[arg-type]
    with pytest.raises(kdcache.CacheNotFoundError):
        kdcache.open_cache(tmp_path / "missing.zarr")


# ---------------------------------------------------------------------- DistillationLoss on its own
def test_distillation_loss_on_its_own():
    torch.manual_seed(0)
    student, teacher, classes = torch.randn(6, 5), torch.randn(6, 5) * 3, torch.tensor([0, 1, 2, 3, 4, 0])
    T, a = 2.0, 0.4
    loss_fn = kdcache.DistillationLoss(kdcache.LossConfig(distill="soft", alpha=a, temperature=T), 5)
    kl = F.kl_div(F.log_softmax(student / T, 1), F.log_softmax(teacher / T, 1), reduction="batchmean",
                  log_target=True) * T * T
    expect = (1 - a) * F.cross_entropy(student, classes) + a * kl
    # class indices or a one-hot distribution; teacher logits as a tensor or as cached targets
    for y in (classes, F.one_hot(classes, 5).float()):
        for t in (teacher, {"logits": teacher, "argmax": teacher.argmax(1)}):
            assert torch.allclose(loss_fn(student, y, t)["loss"], expect, atol=1e-5)
    # a top-k cache's targets (K = C - 1): rebuilt exactly at T = 1
    modes = [kdcache.TargetMode.parse(m) for m in ("topk:4", "full")]
    topk, full = (m.decode({k: torch.as_tensor(v) for k, v in m.encode(teacher).items()}) for m in modes)
    at1 = kdcache.DistillationLoss(kdcache.LossConfig(distill="soft", temperature=1.0), 5)
    assert torch.allclose(at1(student, classes, topk)["kd_loss"], at1(student, classes, full)["kd_loss"],
                          atol=2e-2)
    hard_loss = kdcache.DistillationLoss(kdcache.LossConfig(distill="hard", alpha=1.0), 5)
    hard = hard_loss(student, classes, teacher)
    assert torch.allclose(hard["loss"], F.cross_entropy(student, teacher.argmax(1)))
    alone = loss_fn(student, classes)
    assert float(alone["kd_loss"]) == 0.0 and torch.allclose(alone["loss"], F.cross_entropy(student, classes))


def test_a_persistent_worker_holding_an_old_epoch_refuses_to_replay_it(tmp_path, tiny_h5, tiny_teacher):
    """persistent_workers keeps each worker's copy of the dataset from the first epoch: after set_epoch the
    workers would silently replay the first epoch's views for ever (the V = 1 case); they raise instead."""
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr")
    ds = kdcache.CacheDataset(path, tiny_h5, seed=5)
    first = torch.cat([b["view"] for b in DataLoader(ds, batch_size=8, num_workers=1)])
    loader = DataLoader(ds, batch_size=8, num_workers=1, persistent_workers=True)
    assert torch.equal(torch.cat([b["view"] for b in loader]), first)
    ds.set_epoch(next(e for e in range(1, 10) if not np.array_equal(
        kdcache.epoch_views(kdcache.open_cache(path).done_units(), epoch=e, seed=5), ds.views)))
    with pytest.raises(kdcache.ConfigError, match="persistent_workers=True"):
        next(iter(loader))
    fresh = torch.cat([b["view"] for b in DataLoader(ds, batch_size=8, num_workers=1)])  # new workers: fine
    assert torch.equal(fresh, torch.as_tensor(ds.views)[torch.arange(len(ds)) // BLOCK])
    assert not torch.equal(fresh, first)
