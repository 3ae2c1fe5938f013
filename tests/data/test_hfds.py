"""``hfds:``: Hugging Face ``datasets`` built locally (save_to_disk, imagefolder, Parquet), columns, keys,
changed datasets, DataLoader workers and bad inputs."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from kdcache.data import open_dataset
from kdcache.data._hfds import parse_hfds
from kdcache.errors import DataError, DataNotFoundError, DownloadUnavailableError

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.filterwarnings("error:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(autouse=True)
def _local_hf_cache(tmp_path, monkeypatch):
    """load_dataset writes Arrow files into its cache: keep them in the test's directory, and stay offline."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()


def pixels(i: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size=(size, size + i % 3, 3), dtype=np.uint8)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def make_hf(n: int = 9, *, ids: list | None = None, labels: list | None = None, names=("cat", "dog", "eel"),
            classlabel: bool = True, image_name: str = "image", label_name: str = "label"):
    cols = {image_name: [{"bytes": png(pixels(i)), "path": None} for i in range(n)],
            label_name: labels if labels is not None else [i % len(names) for i in range(n)]}
    feats = {image_name: datasets.Image(),
             label_name: datasets.ClassLabel(names=list(names)) if classlabel else datasets.Value("int64")}
    if ids is not None:
        cols["id"], feats["id"] = ids, datasets.Value("string")
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


def test_a_save_to_disk_dataset_dict_reads_splits_columns_and_class_names(tmp_path):
    d = datasets.DatasetDict({"train": make_hf(9), "test": make_hf(4)})
    d.save_to_disk(tmp_path / "dd")
    ds = open_dataset(f"hfds:{tmp_path / 'dd'}", "train")
    assert len(ds) == 9 and ds.class_names == ["cat", "dog", "eel"] and ds.labels.tolist() == [0, 1, 2] * 3
    fp = ds.fingerprint
    assert ds.keys == [f"{fp}/{i}" for i in range(9)]
    for i in (0, 4, 8):
        image, label = ds[i]
        assert torch.equal(image, chw(pixels(i))) and label == i % 3
    assert ds.image_size(4) == (8, 9)
    assert [t.shape for t in ds.get_images([8, 0])] == [chw(pixels(8)).shape, chw(pixels(0)).shape]
    d_ = ds.describe()
    assert d_["decoder"] == "pillow-rgb8" and d_["hf_fingerprint"] == fp
    assert d_["columns"] == {"image": "image", "label": "label", "id": None}
    assert len(open_dataset(f"hfds:{tmp_path / 'dd'}", "test")) == 4
    with pytest.raises(DataError, match=r"has no split 'val'; available splits: test, train$"):
        open_dataset(f"hfds:{tmp_path / 'dd'}", "val")
    # reopening gives the same keys (the fingerprint is stored with the dataset)
    assert open_dataset(f"hfds:{tmp_path / 'dd'}", "train").manifest_hash() == ds.manifest_hash()


def test_an_id_column_keys_the_samples_and_a_changed_dataset_changes_the_manifest(tmp_path):
    make_hf(6, ids=[f"img-{i:02d}" for i in range(6)]).save_to_disk(tmp_path / "a")
    ds = open_dataset(f"hfds:{tmp_path / 'a'}")
    assert ds.keys == [f"img-{i:02d}" for i in range(6)] and ds.columns["id"] == "id"
    assert open_dataset(f"hfds:{tmp_path / 'a'},id=none").keys[0].endswith("/0")
    # without ids, the row keys are bound to the fingerprint: one more row, or other rows, change every key
    make_hf(6).save_to_disk(tmp_path / "b")
    make_hf(7).select(range(6)).flatten_indices().save_to_disk(tmp_path / "c")
    b, c = open_dataset(f"hfds:{tmp_path / 'b'}"), open_dataset(f"hfds:{tmp_path / 'c'}")
    assert b.labels.tolist() == c.labels.tolist() and b.manifest_hash() != c.manifest_hash()
    with pytest.raises(DataError, match=r"id column 'id' repeats values.*id=none"):
        make_hf(3, ids=["x", "x", "y"]).save_to_disk(tmp_path / "dup")
        open_dataset(f"hfds:{tmp_path / 'dup'}")


def test_named_columns_integer_labels_and_options(tmp_path):
    make_hf(6, classlabel=False, image_name="img", label_name="target").save_to_disk(tmp_path / "n")
    with pytest.raises(DataError, match=r"no ClassLabel column and no 'label' column .*label=COL"):
        open_dataset(f"hfds:{tmp_path / 'n'}")
    ds = open_dataset(f"hfds:{tmp_path / 'n'},label=target")
    assert ds.class_names == ["0", "1", "2"] and ds.columns == {"image": "img", "label": "target", "id": None}
    assert torch.equal(ds[5][0], chw(pixels(5)))
    assert parse_hfds("a,b,revision=main,label=x") == ("a,b", {"revision": "main", "label": "x"})
    with pytest.raises(DataError, match=r"unknown option 'colour=red'"):
        parse_hfds("beans,colour=red")
    with pytest.raises(DataError, match="revision apply to load_dataset, not to a save_to_disk"):
        open_dataset(f"hfds:{tmp_path / 'n'},label=target,revision=main")


def test_imagefolder_and_parquet_through_load_dataset(tmp_path):
    for i in range(4):
        p = tmp_path / "imf" / "train" / ("ant" if i % 2 else "bee") / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(i)).save(p)
    ds = open_dataset(f"hfds:{tmp_path / 'imf'}")
    assert ds.class_names == ["ant", "bee"] and len(ds) == 4
    got = {int(label): [] for label in ds.labels}
    for i in range(4):
        image, label = ds[i]
        got[label].append(image)
    assert any(torch.equal(t, chw(pixels(1))) for t in got[0])  # decoded from the files' paths
    make_hf(5).to_parquet(tmp_path / "d.parquet")
    pq = open_dataset(f"hfds:{tmp_path / 'd.parquet'}")
    assert len(pq) == 5 and torch.equal(pq[3][0], chw(pixels(3)))


def test_bad_inputs_are_one_line_errors(tmp_path):
    make_hf(4, labels=[0, 1, -1, 1]).save_to_disk(tmp_path / "unlabelled")
    with pytest.raises(DataError) as e:
        open_dataset(f"hfds:{tmp_path / 'unlabelled'}")
    assert "row 2 has label -1, outside the classes" in str(e.value) and "\n" not in str(e.value)
    make_hf(4, labels=[0, 1, 9, 1], classlabel=False).save_to_disk(tmp_path / "oob")
    with pytest.raises(DataError, match=r"labels imply 10 classes"):
        open_dataset(f"hfds:{tmp_path / 'oob'}")
    make_hf(3).save_to_disk(tmp_path / "ok")
    with pytest.raises(DataError, match=r"no column 'pic' for the images; columns: image, label$"):
        open_dataset(f"hfds:{tmp_path / 'ok'},image=pic")
    with pytest.raises(DataError, match=r"column 'label' is ClassLabel, not an Image feature"):
        open_dataset(f"hfds:{tmp_path / 'ok'},image=label")
    with pytest.raises(DataNotFoundError, match="hfds data not found"):
        open_dataset(f"hfds:{tmp_path / 'absent'}")
    with pytest.raises(DownloadUnavailableError) as e:
        open_dataset("hfds:someone/not-downloaded")
    assert "save it with save_to_disk" in str(e.value) and "\n" not in str(e.value)
    d = datasets.Dataset.from_dict({"x": [1, 2]})
    d.save_to_disk(tmp_path / "noimg")
    with pytest.raises(DataError, match=r"no Image column \(columns: x\); name the image column with image=COL"):
        open_dataset(f"hfds:{tmp_path / 'noimg'}")
    make_hf(2).save_to_disk(tmp_path / "one")
    with pytest.raises(DataError, match=r"is one split \('train'\), not 'test'"):
        open_dataset(f"hfds:{tmp_path / 'one'}", "test")


def _read_all(ds, order):
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, order), batch_size=3, num_workers=2,
                                         collate_fn=lambda b: b)
    return [img for batch in loader for img, _ in batch]


def test_random_access_in_dataloader_workers_and_pickles(tmp_path):
    make_hf(12).save_to_disk(tmp_path / "w")
    ds = open_dataset(f"hfds:{tmp_path / 'w'}", limit=9)
    order = list(np.random.default_rng(1).permutation(len(ds)))
    got = _read_all(ds, order)
    assert all(torch.equal(g, ds[int(i)][0]) for g, i in zip(got, order))
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000  # the Arrow file travels by name, not by value
    assert clone.keys == ds.keys and torch.equal(clone[2][0], ds[2][0])


def test_the_cli_reports_a_bad_hfds_source_in_one_line(tmp_path):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    make_hf(3).save_to_disk(tmp_path / "ok")
    for spec, message in ((f"hfds:{tmp_path / 'ok'},image=pic", "no column 'pic' for the images"),
                          (f"hfds:{tmp_path / 'ok'},label=image", "holds"),
                          ("hfds:someone/offline", "save it with save_to_disk")):
        res = CliRunner().invoke(cli, ["dump-teacher", "--data", spec, "--teacher", "cnn_tiny", "--random-init",
                                       "--out", str(tmp_path / "c.zarr"), "--no-progress", "--workers", "0"])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], \
            res.output
        assert not (tmp_path / "c.zarr").exists()


def test_data_arg_appends_hfds_options_to_the_recorded_source(tmp_path):
    from click.testing import CliRunner
    from kdcache.cli.main import cli

    from kdcache.cache import CacheStore

    make_hf(6, classlabel=False, image_name="img", label_name="target").save_to_disk(tmp_path / "n")
    out = str(tmp_path / "c.zarr")
    base = ["--teacher", "cnn_tiny", "--random-init", "--out", out, "--views", "1", "--size", "8", "--workers", "0",
            "--no-progress", "--block-size", "4"]
    # --data-arg before or after --data, as click may process either first
    res = CliRunner().invoke(cli, ["dump-teacher", "--data-arg", "label=target", "--data", f"hfds:{tmp_path / 'n'}",
                                   "--data-arg", "id=none", *base])
    assert res.exit_code == 0, res.output
    source = f"hfds:{tmp_path / 'n'},label=target,id=none"
    assert CacheStore.open(out).attrs["dataset"]["source"] == source
    res = CliRunner().invoke(cli, ["verify", out, "--teacher", "cnn_tiny", "--random-init", "--samples", "4",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output  # the cache's recorded source, options included
    res = CliRunner().invoke(cli, ["dump-teacher", "--data", "digits", "--data-arg", "label=x", *base])
    assert res.exit_code == 2 and "--data-arg applies to --data hfds:... only" in res.output
