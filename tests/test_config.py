"""The one config base: strict keys, type checks (no silent coercion), nested configs, JSON round trips."""

from __future__ import annotations

import json

import pytest

from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec
from kdcache.errors import ConfigError
from kdcache.train import LossConfig, TrainConfig

DUMP = {"data": {"source": "digits", "limit": 10}, "out": "c.zarr", "teacher": {"name": "cnn_tiny"},
        "view": {"scale": [0.5, 1.0], "size": 16}}


@pytest.mark.parametrize("cls,d", [
    (DumpConfig, DUMP),
    (TrainConfig, {"data": {"source": "digits"}, "out": "r", "model": "cnn_tiny", "loss": {"distill": "hard"},
                   "model_kwargs": {"depths": [1, 2]}}),
    (DataConfig, {"source": "hdf5:x.h5", "split": "test"}),
    (TeacherSpec, {"name": "resnet18", "kwargs": {"pretrained": False}}),
    (LossConfig, {"alpha": 1, "temperature": 2}),
])
def test_round_trip_through_json(cls, d):
    cfg = cls.from_dict(d)
    again = cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_nested_dicts_become_configs_and_lists_tuples():
    cfg = DumpConfig.from_dict(DUMP)
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.teacher, TeacherSpec)
    assert cfg.view["scale"] == (0.5, 1.0)
    assert LossConfig(alpha=1).alpha == 1.0 and isinstance(LossConfig(alpha=1).alpha, float)


@pytest.mark.parametrize("patch,msg", [
    ({"views": 2.7}, "DumpConfig.views must be an integer, got 2.7"),
    ({"views": True}, "DumpConfig.views must be an integer, got True"),
    ({"amp": "yes"}, "DumpConfig.amp must be true or false"),
    ({"seed": "0"}, "DumpConfig.seed must be an integer"),
    ({"view": [1, 2]}, "DumpConfig.view must be a table"),
    ({"data": {"source": "digits", "limit": 2.5}}, "DataConfig.limit must be an integer"),
    ({"teacher": {"nam": "x"}}, r"unknown teacher spec keys \['nam'\]"),
    ({"bogus": 1}, r"unknown dump config keys \['bogus'\]; known keys"),
])
def test_wrong_types_and_unknown_keys_are_refused_by_name(patch, msg):
    with pytest.raises(ConfigError, match=msg):
        DumpConfig.from_dict({**DUMP, **patch})


def test_missing_required_key_is_a_config_error():
    with pytest.raises(ConfigError, match="dump config needs a 'out'"):
        DumpConfig.from_dict({"data": {"source": "digits"}, "teacher": {}})
    with pytest.raises(ConfigError, match="must be an integer"):
        TrainConfig(data=DataConfig("digits"), out="r", model="m", epochs=1.5)


def test_a_missing_optional_package_names_the_extra_that_installs_it():
    from kdcache._utils import optional_import
    from kdcache.errors import ModelError

    assert optional_import("json", extra="x", what="things").dumps([]) == "[]"
    with pytest.raises(ModelError, match=r"timm: models need the optional no_such_pkg package .*"
                                         r"pip install 'kdcache\[timm\]'"):
        optional_import("no_such_pkg.sub", extra="timm", what="timm: models", error=ModelError)
