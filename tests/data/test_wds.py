"""``wds:``: webdataset tar shards written by webdataset's own TarWriter; random access through kdcache's
index, keys from __key__, labels from cls, splits, workers; exact replay of mixed views; bad shards."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from kdcache.data import DataConfig, open_dataset
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher
from kdcache.engine._verify import verify_cache
from kdcache.errors import CacheMismatchError, DataError, DataNotFoundError

wds = pytest.importorskip("webdataset")
pytestmark = pytest.mark.filterwarnings("error:The image decoding and encoding:DeprecationWarning")


def pixels(i: int) -> np.ndarray:
    a = np.random.default_rng(i).integers(0, 90, size=(12 + i % 3, 14, 3), dtype=np.uint8)
    a[:, :, i % 3] = 220
    return a


def encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def write_shards(root, name: str, n: int, per_shard: int, classes: int = 3, start: int = 0) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(-(-n // per_shard)):
        with wds.TarWriter(str(root / f"{name}-{s:04d}.tar")) as w:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                w.write({"__key__": f"{name}/{start + i:06d}", "png": encode(pixels(start + i)),
                         "cls": (start + i) % classes, "json": {"i": i}})
    return str(root / f"{name}-{{0000..{-(-n // per_shard) - 1:04d}}}.tar")


def test_shards_read_at_random_with_keys_labels_and_splits(tmp_path):
    pattern = write_shards(tmp_path / "s", "train", 10, 4)
    write_shards(tmp_path / "s", "test", 5, 4, start=100)
    ds = open_dataset(f"wds:{pattern}")
    assert len(ds) == 10 and ds.keys[:2] == ["train/000000", "train/000001"]
    assert ds.labels.tolist() == [i % 3 for i in range(10)] and ds.class_names == ["0", "1", "2"]
    for i in (9, 0, 5):  # any order, across shards
        image, label = ds[i]
        assert torch.equal(image, chw(pixels(i))) and label == i % 3
    assert ds.image_size(4) == (12 + 4 % 3, 14)
    assert ds.describe()["num_shards"] == 3 and ds.describe()["decoder"] == "pillow-rgb8"
    both = f"wds:{tmp_path / 's'}/{{split}}-{{0000..0001}}.tar"
    assert len(open_dataset(both, "test")) == 5 and open_dataset(both, "test").keys[0] == "test/000100"
    with pytest.raises(DataError, match="has no split 'test'.*available splits: train"):
        open_dataset(f"wds:{pattern}", "test")
    glob_ds = open_dataset(f"wds:{tmp_path / 's' / 'train-*.tar'}")
    assert glob_ds.keys == ds.keys
    sub = ds.select([7, 2])
    assert sub.keys == ["train/000007", "train/000002"] and torch.equal(sub[0][0], chw(pixels(7)))


def test_workers_and_pickles_carry_the_index(tmp_path):
    ds = open_dataset(f"wds:{write_shards(tmp_path / 's', 'train', 12, 5)}", limit=9)
    order = list(np.random.default_rng(0).permutation(len(ds)))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, order), batch_size=4, num_workers=2,
                                         collate_fn=lambda b: b)
    got = [img for batch in loader for img, _ in batch]
    assert all(torch.equal(g, ds[int(i)][0]) for g, i in zip(got, order))
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.keys == ds.keys and torch.equal(clone[3][0], ds[3][0])


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_bad_shards_are_one_line_errors(tmp_path):
    png = encode(pixels(0))
    cases = {
        "nokey.tar": ({"README": b"x", "a.png": png, "a.cls": b"0"}, r"member 'README' has no extension, so no "
                                                                     r"sample key"),
        "nocls.tar": ({"a.png": png, "a.cls": b"0", "b.png": png}, r"sample 'b' has no \.cls member"),
        "noimg.tar": ({"a.png": png, "a.cls": b"0", "b.cls": b"1", "b.txt": b"hi"},
                      r"sample 'b' has no image member .* it has \.cls, \.txt"),
        "badcls.tar": ({"a.png": png, "a.cls": b"cat"}, r"a\.cls holds 'cat', not an integer label"),
        "stray.tar": ({**{f"{i}.png": png for i in range(3)}, **{f"{i}.cls": str([0, 1, 40][i]).encode()
                                                               for i in range(3)}}, r"labels imply 41 classes"),
    }
    for name, (members, message) in cases.items():
        _tar(tmp_path / name, dict(sorted(members.items())))
        with pytest.raises(DataError, match=message) as e:
            open_dataset(f"wds:{tmp_path / name}")
        assert "\n" not in str(e.value)
    _tar(tmp_path / "dup1.tar", {"a.png": png, "a.cls": b"0"})
    _tar(tmp_path / "dup2.tar", {"a.png": png, "a.cls": b"1"})
    with pytest.raises(DataError, match=r"sample key 'a' occurs more than once .*dup1\.tar, .*dup2\.tar"):
        open_dataset(f"wds:{tmp_path}/dup{{1..2}}.tar")
    with pytest.raises(DataNotFoundError, match=r"webdataset shard not found: .*absent-0000\.tar"):
        open_dataset(f"wds:{tmp_path}/absent-{{0000..0001}}.tar")
    (tmp_path / "plain.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(DataError, match="is not an uncompressed tar file"):
        open_dataset(f"wds:{tmp_path / 'plain.tar'}")


@pytest.mark.slow
def test_mixed_views_replay_exactly_and_changed_shards_are_refused(tmp_path):
    data = DataConfig(source=f"wds:{write_shards(tmp_path / 's', 'train', 24, 7)}")
    teacher = TeacherSpec(name="cnn_tiny", random_init=True, init_seed=1)
    out = str(tmp_path / "c.zarr")
    dump_teacher(DumpConfig(data=data, out=out, teacher=teacher, views=2, seed=5, block_size=8, batch_size=8,
                            workers=2, device="cpu", view={"size": 16, "mix": "both", "mix_prob": 1.0}),
                 progress=False, log=lambda _m: None)
    report = verify_cache(out, teacher, data, samples=48, batch_size=8, device="cpu")
    assert report["ok"], report["failures"]  # every view rebuilt from its record, partner included
    from kdcache import CacheDataset

    ds = CacheDataset(out, data)
    assert (ds[3]["label"] > 0).sum() >= 1 and ds[3]["image"].shape == (3, 16, 16)
    # a shard rewritten with one sample fewer: the keys change and the cache refuses the data
    write_shards(tmp_path / "s", "train", 23, 7)
    with pytest.raises(CacheMismatchError, match="manifest"):
        CacheDataset(out, data)


def test_the_cli_reports_a_bad_shard_in_one_line(tmp_path):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    _tar(tmp_path / "s.tar", {"README": b"x", "a.png": encode(pixels(0)), "a.cls": b"0"})
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", f"wds:{tmp_path / 's.tar'}", "--teacher", "cnn_tiny",
                                   "--random-init", "--out", str(tmp_path / "c.zarr"), "--no-progress"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith("Error: ") and "member 'README' has no extension" in lines[0]


def test_the_index_is_saved_beside_each_shard_and_rebuilt_when_the_shard_changes(tmp_path, monkeypatch):
    import kdcache.data._wds as wds_mod

    pattern = write_shards(tmp_path / "s", "train", 8, 4)
    first = open_dataset(f"wds:{pattern}")
    indexes = sorted(p.name for p in (tmp_path / "s").glob(f"*{wds_mod.INDEX_SUFFIX}"))
    assert indexes == [f"train-000{i}.tar{wds_mod.INDEX_SUFFIX}" for i in range(2)]
    scanned = []
    real_scan = wds_mod._scan_shard
    monkeypatch.setattr(wds_mod, "_scan_shard", lambda shard, source: scanned.append(shard) or real_scan(shard,
                                                                                                            source))
    again = open_dataset(f"wds:{pattern}")
    assert scanned == [] and again.keys == first.keys and torch.equal(again[6][0], first[6][0])
    # a touched shard is scanned again, the other keeps its index; rewritten shards give the new samples
    import os

    os.utime(tmp_path / "s" / "train-0001.tar", ns=(1, 10**18))
    assert open_dataset(f"wds:{pattern}").keys == first.keys and [p.name for p in scanned] == ["train-0001.tar"]
    assert open_dataset(f"wds:{tmp_path / 's' / '*'}").keys == first.keys  # a glob skips the index files
    write_shards(tmp_path / "s", "train", 7, 4)
    changed = open_dataset(f"wds:{pattern}")
    assert len(changed) == 7 and torch.equal(changed[6][0], chw(pixels(6)))
