"""A real teacher nobody on this project trained: the public CIFAR ResNet-20 checkpoint (old-style
torch pickle, `module.` prefixes) dumped over the shared CIFAR-10 test images."""

from __future__ import annotations

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher


def test_dump_with_the_public_cifar_resnet20(tmp_path, shared_cifar, shared_weights):
    cfg = DumpConfig(data=DataConfig(source=f"hdf5:{shared_cifar}", split="test", limit=300), out=str(tmp_path / "c.zarr"),
                     teacher=TeacherSpec(name="cifar_resnet20", weights=str(shared_weights / "resnet20-12fca82f.th")),
                     views=1, view={"scale": (1.0, 1.0), "flip_prob": 0.0}, workers=0, batch_size=150)
    s = dump_teacher(cfg, progress=False, log=lambda _m: None)
    # whole-image views: agreement with the labels is the checkpoint's accuracy (81.0% on this split)
    assert s.num_classes == 10 and s.done_fraction == 1.0
    assert 0.72 < s.label_agreement < 0.90, s.label_agreement
