"""CacheDataset with views_per_image M: train-student --views-per-image's counterpart (one decode, M epochs' views)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import kdcache
from kdcache.engine._verify import default_atol


def _dump(data: str, teacher: str, out) -> str:
    cfg = kdcache.DumpConfig(data=kdcache.DataConfig(source=data), out=str(out),
                             teacher=kdcache.TeacherSpec(weights=teacher), views=4, seed=7,
                             view={"size": 16}, batch_size=8, workers=0, block_size=8)
    kdcache.dump_teacher(cfg, progress=False, log=lambda _m: None)
    return str(out)


def test_m_views_per_image_are_the_views_of_m_consecutive_epochs(tmp_path, tiny_h5, tiny_teacher):
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr")
    one = kdcache.CacheDataset(path, tiny_h5, seed=5)
    two = kdcache.CacheDataset(path, tiny_h5, seed=5, views_per_image=2)
    teacher = kdcache.load_checkpoint(tiny_teacher)[0].eval()
    assert two.views.shape == (2, len(one.views))
    for epoch in (0, 2):
        two.set_epoch(epoch)
        items = [two[i] for i in range(len(two))]
        for j in range(2):
            one.set_epoch(epoch + j)
            for i, item in enumerate(items):
                ref = one[i]
                assert torch.equal(item["image"][j], ref["image"]) and torch.equal(item["label"][j], ref["label"])
                assert int(item["view"][j]) == ref["view"] and item["index"] == i
                for k, v in ref["targets"].items():
                    assert torch.equal(item["targets"][k][j], v), k
        # replay is exact: the teacher on every slot's view gives the cached targets
        x = torch.stack([it["image"] for it in items]).flatten(0, 1)
        cached = torch.stack([it["targets"]["logits"] for it in items]).flatten(0, 1)
        with torch.inference_mode():
            fresh = teacher(x)
        assert float((fresh - cached).abs().max()) <= default_atol(float(fresh.abs().max()))
    assert (two.views[0] != two.views[1]).any()  # two epochs, two different views
    batch = next(iter(DataLoader(two, batch_size=5)))
    assert batch["image"].shape == (5, 2, 3, 16, 16) and batch["targets"]["logits"].shape[:2] == (5, 2)
    assert batch["view"].shape == (5, 2) and "views_per_image=2" in repr(two)


def test_views_per_image_bad_values(tmp_path, tiny_h5, tiny_teacher):
    path = _dump(tiny_h5, tiny_teacher, tmp_path / "c.zarr")
    with pytest.raises(kdcache.ConfigError, match="views_per_image must be an integer >= 1"):
        kdcache.CacheDataset(path, tiny_h5, views_per_image=0)
    ds = kdcache.CacheDataset(path, tiny_h5, views_per_image=2)
    with pytest.raises(kdcache.ConfigError, match="split a pass"):
        ds.set_epoch(1)
