"""The Hugging Face KD guide's workflow on kdcache, offline: a ``datasets`` dataset built locally
(save_to_disk), a ViT teacher saved with ``save_pretrained``, a torchvision MobileNetV2 student.
dump-teacher -> train-student -> verify -> CacheDataset, through the CLI; a changed dataset is refused."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from kdcache.cli.main import cli
from PIL import Image

from kdcache import CacheDataset
from kdcache.errors import CacheMismatchError

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

CLASSES = ["angular_leaf_spot", "bean_rust", "healthy"]  # beans' classes; the images are synthetic


def _beans_like(n: int, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        c = i % 3
        a = rng.integers(0, 90, size=(20 + i % 4, 24, 3), dtype=np.uint8)
        a[:, :, c] = 220  # a learnable colour cue per class
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        rows.append({"bytes": buf.getvalue(), "path": None})
        labels.append(c)
    feats = datasets.Features({"image_file_path": datasets.Value("string"), "image": datasets.Image(),
                               "labels": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image_file_path": [f"/beans/{seed}/{i}.jpg" for i in range(n)],
                                       "image": rows, "labels": labels}, features=feats)


def _save_vit(path) -> str:
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3,
                                    id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    transformers.ViTForImageClassification(config).save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def run(*args, ok=True):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
def test_the_guide_workflow_on_hfds_data(tmp_path):
    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": _beans_like(24, 0), "validation": _beans_like(9, 1)}).save_to_disk(tmp_path / "beans")
    data, vit, cache = f"hfds:{tmp_path / 'beans'}", _save_vit(tmp_path / "vit"), str(tmp_path / "c.zarr")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="The image decoding and encoding")  # no deprecated decoder
        run("dump-teacher", "--data", data, "--teacher", f"hf:{vit}", "--out", cache, "--views", "2",
            "--workers", "2", "--block-size", "8", "--batch-size", "8", "--no-progress", "--device", "cpu")
        info = json.loads(run("info", cache, "--json").stdout)
        assert info["num_samples"] == 24 and info["done_fraction"] == 1.0
        run("train-student", "--cache", cache, "--data", data, "--student", "mobilenet_v2", "--epochs", "1",
            "--batch-size", "8", "--workers", "2", "--val-split", "validation", "--out", tmp_path / "run",
            "--no-progress", "--device", "cpu")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 0 and np.isfinite(rows[0]["train/kd_loss"]) and "val/top1" in rows[0]
    rep = json.loads(run("verify", cache, "--teacher", f"hf:{vit}", "--samples", "48", "--json",
                         "--device", "cpu").stdout)
    assert rep["ok"] and rep["samples_checked"] == 48
    ds = CacheDataset(cache, data)
    item = ds[5]
    assert item["image"].shape == (3, 32, 32) and item["targets"]["logits"].shape == (3,)
    assert ds.dataset.class_names == CLASSES and ds.dataset.keys[5].endswith("/5")
    # the dataset grows by one row: its fingerprint, so every key, changes and the cache refuses it
    datasets.DatasetDict({"train": _beans_like(25, 0), "validation": _beans_like(9, 1)}).save_to_disk(tmp_path / "b2")
    with pytest.raises(CacheMismatchError, match="manifest"):
        CacheDataset(cache, f"hfds:{tmp_path / 'b2'}")
    res = run("train-student", "--cache", cache, "--data", f"hfds:{tmp_path / 'b2'}", "--student", "mobilenet_v2",
              "--epochs", "1", "--out", tmp_path / "run2", "--no-progress", ok=False)
    assert res.exit_code == 1 and "manifest" in res.output.strip().splitlines()[-1]
