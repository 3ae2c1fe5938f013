"""Smoke test of bench/make_jpeg_folder.py at toy size: deterministic bytes, ImageNet-like sizes, readable by
kdcache's folder source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kdcache.data import open_dataset

REPO = Path(__file__).resolve().parents[1]


def _make(out: Path, h5: str, *extra: str) -> None:
    cmd = [sys.executable, str(REPO / "bench" / "make_jpeg_folder.py"), "--out", str(out), "--images", "12",
           "--classes", "4", "--val-per-class", "1", "--processes", "1", "--data", h5, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_jpeg_folder_is_deterministic_imagenet_shaped_and_readable(tmp_path, tiny_h5):
    h5 = tiny_h5.split(":", 1)[1]
    _make(tmp_path / "a", h5)
    _make(tmp_path / "b", h5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.JPEG"))
    assert len(files) == 12 + 4
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    ds = open_dataset(f"folder:{tmp_path / 'a'}", "train")
    assert len(ds) == 12 and ds.num_classes == 4 and len(open_dataset(f"folder:{tmp_path / 'a'}", "val")) == 4
    sizes = [ds.image_size(i) for i in range(len(ds))]
    assert all(300 <= min(hw) <= 500 and max(hw) <= 2 * min(hw) for hw in sizes) and len(set(sizes)) > 1
    assert tuple(ds.get_image(0).shape[1:]) == sizes[0]
    _make(tmp_path / "s", h5, "--synthetic")
    assert len(list((tmp_path / "s").rglob("*.JPEG"))) == 16
