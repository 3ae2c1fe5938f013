"""``folder:PATH``: ImageFolder layouts, keys, decoding, header-only sizes, bad trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import kdcache.data._folder as folder_mod
from kdcache.data import open_dataset
from kdcache.errors import DataError, DataNotFoundError

# kdcache decodes with Pillow: torchvision's deprecated codecs must not be reached.
pytestmark = pytest.mark.filterwarnings("error:The image decoding and encoding:DeprecationWarning")


def img(h: int = 4, w: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def test_flat_folder_is_the_train_split(make_folder):
    files = {"dog/b.png": img(seed=1), "cat/z.png": img(seed=2), "cat/a.png": img(5, 3, seed=3),
             "dog/sub/c.png": img(seed=4)}
    root = make_folder(files)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "dog" / ".hidden.png").write_bytes(b"junk")
    ds = open_dataset(f"folder:{root}")
    assert ds.class_names == ["cat", "dog"]
    assert ds.keys == ["cat/a.png", "cat/z.png", "dog/b.png", "dog/sub/c.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    for i, key in enumerate(ds.keys):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and torch.equal(image, chw(files[key]))
        assert label == ds.class_names.index(key.split("/")[0])
    assert ds.image_size(0) == (5, 3) and ds.image_size(1) == (4, 6)
    with pytest.raises(DataError, match=r"no split folders.*'train' split only"):
        open_dataset(f"folder:{root}", "test")


def test_split_folders(make_folder):
    root = make_folder({"train/a/0.png": img(), "train/b/1.png": img(seed=1), "val/a/2.png": img(seed=2),
                        "val/b/3.png": img(seed=3)})
    train, val = open_dataset(f"folder:{root}"), open_dataset(f"folder:{root}", "val")
    assert train.keys == ["a/0.png", "b/1.png"] and val.keys == ["a/2.png", "b/3.png"]
    assert train.split == "train" and val.source == f"folder:{root}"
    with pytest.raises(DataError, match=r"no split 'test'; available splits: train, val"):
        open_dataset(f"folder:{root}", "test")


def test_jpeg_grey_rgba_and_16_bit_png_become_rgb_uint8(make_folder, tmp_path):
    smooth = np.tile(np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None], (8, 1, 3))
    root = make_folder({"a/photo.jpg": smooth})
    Image.fromarray(np.full((3, 4), 77, dtype=np.uint8), "L").save(root / "a" / "grey.png")
    Image.fromarray(np.full((3, 4, 4), 200, dtype=np.uint8), "RGBA").save(root / "a" / "rgba.png")
    Image.fromarray(np.full((3, 4), 65535, dtype=np.uint16)).save(root / "a" / "deep.png")
    ds = open_dataset(f"folder:{root}")
    got = dict(zip(ds.keys, ds.get_images(range(len(ds)))))
    assert all(t.dtype == torch.uint8 and t.shape[0] == 3 for t in got.values())
    assert (got["a/photo.jpg"].int() - chw(smooth).int()).abs().max() <= 8
    assert torch.equal(got["a/grey.png"], torch.full((3, 3, 4), 77, dtype=torch.uint8))
    assert torch.equal(got["a/rgba.png"], torch.full((3, 3, 4), 200, dtype=torch.uint8))
    assert torch.equal(got["a/deep.png"], torch.full((3, 3, 4), 255, dtype=torch.uint8))


def test_image_size_reads_the_header_only(make_folder, monkeypatch):
    root = make_folder({"a/x.png": img(7, 9)})
    ds = open_dataset(f"folder:{root}")
    monkeypatch.setattr(folder_mod, "decode_image_file", lambda *a, **k: pytest.fail("image_size decoded"))
    assert ds.image_size(0) == (7, 9)


def test_missing_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="image folder not found"):
        open_dataset(f"folder:{tmp_path / 'absent'}")


def test_empty_class_folder_is_named(make_folder):
    root = make_folder({"a/0.png": img()})
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty_class holds no images"):
        open_dataset(f"folder:{root}")


def test_no_class_folders(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class sub-folders"):
        open_dataset(f"folder:{tmp_path}")


def test_corrupt_image_is_named(make_folder):
    root = make_folder({"a/good.png": img()})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = open_dataset(f"folder:{root}")
    assert ds.keys == ["a/broken.png", "a/good.png"]
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        ds.get_image(0)
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        ds.image_size(0)
    assert torch.equal(ds.get_image(1), chw(img()))


def test_deleted_image(make_folder):
    root = make_folder({"a/0.png": img(), "a/1.png": img()})
    ds = open_dataset(f"folder:{root}")
    (root / "a" / "1.png").unlink()
    with pytest.raises(DataNotFoundError, match=r"1\.png"):
        ds.get_image(1)


def test_val_fraction_holds_out_a_deterministic_stratified_split(make_folder):
    files = {f"{c}/{i:02d}.png": img(4, 4, seed=i) for c in ("cat", "dog") for i in range(10)}
    files["emu/only.png"] = img(4, 4, seed=99)  # a one-image class stays in train
    root = make_folder(files)
    train = open_dataset(f"folder:{root}", "train", val_fraction=0.2)
    val = open_dataset(f"folder:{root}", "val", val_fraction=0.2)
    assert sorted(train.keys + val.keys) == sorted(files)
    assert not set(train.keys) & set(val.keys)
    assert np.bincount(val.labels, minlength=3).tolist() == [2, 2, 0]
    assert train.class_names == val.class_names == ["cat", "dog", "emu"]
    # The division depends on the keys alone: same result for a copy of the tree elsewhere.
    copy = make_folder(files, name="copy")
    assert open_dataset(f"folder:{copy}", "val", val_fraction=0.2).keys == val.keys
    assert val.describe()["val_fraction"] == 0.2 and "val_fraction" not in open_dataset(f"folder:{root}").describe()
    for image_key, i in zip(val.keys, range(len(val))):
        assert torch.equal(val[i][0], chw(files[image_key]))
    with pytest.raises(DataError, match="train and val, not 'test'"):
        open_dataset(f"folder:{root}", "test", val_fraction=0.2)
    with pytest.raises(DataError, match="hold some out with `val_fraction`"):
        open_dataset(f"folder:{root}", "val")


def test_val_fraction_is_refused_where_it_does_not_apply(make_folder, tmp_path):
    root = make_folder({"train/a/x.png": img(), "val/a/y.png": img()})
    with pytest.raises(DataError, match="has split folders .*`val_fraction` only divides a folder without them"):
        open_dataset(f"folder:{root}", val_fraction=0.1)


def test_val_fraction_divides_the_train_split_of_any_source_per_class(tiny_h5):
    import numpy as np

    full = open_dataset(tiny_h5, "train")
    train, val = (open_dataset(tiny_h5, s, val_fraction=0.25) for s in ("train", "val"))
    assert sorted(train.keys + val.keys) == sorted(full.keys) and not set(train.keys) & set(val.keys)
    assert np.bincount(val.labels).tolist() == [4, 4, 4]  # stratified: a quarter of each class's 16
    assert val.split == "val" and val.describe()["val_fraction"] == 0.25 and len(val.get_images([0, 1])) == 2
    img0 = full.get_image(full.keys.index(val.keys[0]))  # the held-out part reads the train split's images
    assert (val.get_image(0) == img0).all()
    assert open_dataset(tiny_h5, "val", val_fraction=0.25).keys == val.keys  # deterministic
    assert len(open_dataset(tiny_h5, "test", val_fraction=0.25)) == 24  # other splits are untouched
    assert len(open_dataset(tiny_h5, "train", val_fraction=0.25, limit=9)) == 9  # limit applies after
