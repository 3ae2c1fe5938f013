"""Source specs, ``open_dataset`` argument checks and ``DataConfig``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdcache.data import DataConfig, ImageDataset, open_dataset, parse_source
from kdcache.errors import ConfigError, DataError, KdcacheError


def test_parse_source():
    assert parse_source("digits") == ("digits", "")
    assert parse_source("hdf5:/x/y.h5") == ("hdf5", "/x/y.h5")
    assert parse_source("folder:rel/dir") == ("folder", "rel/dir")
    assert parse_source("cifar10:~/data") == ("cifar10", "~/data")


@pytest.mark.parametrize("source", ["mnist", "zarr:/x", "/data/cifar10.h5", ""])
def test_unknown_scheme_lists_schemes(source):
    with pytest.raises(DataError, match=r"unknown data source .*digits, hdf5:PATH, folder:PATH, cifar10:ROOT"):
        open_dataset(source)


def test_bad_source_specs():
    with pytest.raises(DataError, match="needs a path after 'hdf5:'"):
        open_dataset("hdf5:")
    with pytest.raises(DataError, match="'digits' takes no path"):
        open_dataset("digits:/tmp")
    with pytest.raises(DataError, match="must be a string"):
        open_dataset(42)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="split must be a non-empty string"):
        open_dataset("digits", "")
    with pytest.raises(DataError, match="subset_seed must be an integer"):
        open_dataset("digits", subset_seed="1")  # type: ignore[arg-type]


def test_errors_are_one_line_kdcache_errors(tmp_path):
    for call in (lambda: open_dataset("nope"), lambda: open_dataset(f"hdf5:{tmp_path}/x.h5"),
                 lambda: open_dataset("digits", "val")):
        with pytest.raises(KdcacheError) as info:
            call()
        assert "\n" not in str(info.value)


def test_open_dataset_returns_an_image_dataset_with_the_source_as_given():
    ds = open_dataset("digits", "test", limit=np.int64(30), subset_seed=4)
    assert isinstance(ds, ImageDataset) and len(ds) == 30
    assert ds.source == "digits" and ds.split == "test"
    assert json.loads(json.dumps(ds.describe())) == ds.describe()
    assert "digits" in repr(ds)


def test_data_config_round_trip_and_open():
    cfg = DataConfig(source="digits", split="test", limit=25, subset_seed=3)
    d = cfg.to_dict()
    assert d == {"source": "digits", "split": "test", "limit": 25, "subset_seed": 3, "val_fraction": 0.0}
    assert DataConfig.from_dict(json.loads(json.dumps(d))) == cfg
    ds = cfg.open()
    assert len(ds) == 25 and ds.split == "test"
    assert ds.keys == open_dataset("digits", "test", limit=25, subset_seed=3).keys
    train = cfg.open("train")
    assert train.split == "train" and len(train) == 25
    with pytest.raises(AttributeError):
        cfg.limit = 3  # type: ignore[misc]


def test_data_config_validation():
    with pytest.raises(ConfigError, match="unknown data config keys"):
        DataConfig.from_dict({"source": "digits", "batch": 3})
    with pytest.raises(ConfigError, match="needs a 'source'"):
        DataConfig.from_dict({"split": "train"})
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        DataConfig(source="digits", limit=0)
    with pytest.raises(ConfigError, match="data source must be a non-empty string"):
        DataConfig(source="")
