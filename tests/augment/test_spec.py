"""ViewSpec validation, dict round trip and the self-contained description."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcache.augment import ViewPipeline, ViewSpec, describe_spec, param_array_specs
from kdcache.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 0),
        ("size", 3.5),
        ("size", True),
        ("scale", (0.0, 1.0)),
        ("scale", (0.9, 0.5)),
        ("scale", (0.5, 1.5)),
        ("scale", (0.5,)),
        ("ratio", (-1.0, 2.0)),
        ("ratio", (2.0, 1.0)),
        ("interpolation", "lanczos9"),
        ("antialias", "yes"),
        ("flip_prob", 1.25),
        ("flip_prob", float("nan")),
        ("mean", (0.5, 0.5)),
        ("std", (0.2, 0.0, 0.2)),
        ("mix", "mosaic"),
        ("mixup_alpha", 0.0),
        ("cutmix_alpha", -1.0),
        ("mix_prob", -0.1),
        ("crop_pct", 0.0),
        ("crop_pct", 1.5),
    ],
)
def test_bad_values_raise_config_error_quoting_value(field, value):
    with pytest.raises(ConfigError) as info:
        ViewSpec(**{field: value})
    assert field in str(info.value)
    assert repr(value) in str(info.value)


def test_spec_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        ViewSpec(32)  # type: ignore[misc]
    spec = ViewSpec()
    with pytest.raises(AttributeError):
        spec.size = 64  # type: ignore[misc]


def test_lists_and_ints_are_normalised_so_equal_specs_compare_equal():
    a = ViewSpec(scale=[1, 1], flip_prob=1, mean=[0, 0, 0], std=[1, 1, 1])
    b = ViewSpec(scale=(1.0, 1.0), flip_prob=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert a == b and hash(a) == hash(b)
    assert isinstance(a.scale, tuple) and isinstance(a.flip_prob, float)


specs = st.builds(
    ViewSpec,
    size=st.integers(1, 512),
    scale=st.tuples(st.floats(0.01, 0.5), st.floats(0.5, 1.0)),
    ratio=st.tuples(st.floats(0.2, 1.0), st.floats(1.0, 5.0)),
    interpolation=st.sampled_from(["bilinear", "bicubic", "nearest"]),
    antialias=st.booleans(),
    flip_prob=st.floats(0.0, 1.0),
    mean=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    std=st.tuples(*[st.floats(0.01, 1.0)] * 3),
    mix=st.sampled_from(["none", "mixup", "cutmix", "both"]),
    mixup_alpha=st.floats(0.01, 10.0),
    cutmix_alpha=st.floats(0.01, 10.0),
    mix_prob=st.floats(0.0, 1.0),
    crop_pct=st.floats(0.05, 1.0),
)


@settings(max_examples=60, deadline=None)
@given(spec=specs)
def test_to_dict_from_dict_round_trip_through_json(spec):
    d = spec.to_dict()
    text = json.dumps(d)  # JSON-safe
    assert all(not isinstance(v, tuple) for v in d.values())
    assert ViewSpec.from_dict(json.loads(text)) == spec


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="sharpness"):
        ViewSpec.from_dict({"size": 32, "sharpness": 2})


def test_is_mixed():
    assert not ViewSpec().is_mixed
    assert all(ViewSpec(mix=m).is_mixed for m in ("mixup", "cutmix", "both"))


def test_describe_op_order_and_settings_unmixed():
    spec = ViewSpec(size=24, interpolation="bicubic", antialias=False, flip_prob=0.3)
    d = describe_spec(spec)
    json.dumps(d)
    assert d["op_order"] == ["resized_crop", "horizontal_flip", "to_float_0_1", "normalize"]
    crop = d["ops"][0]
    assert crop["settings"]["size"] == [24, 24]
    assert crop["settings"]["interpolation"] == "bicubic" and crop["settings"]["antialias"] is False
    assert "resized_crop" in crop["apply"] and "antialias=False" in crop["apply"]
    assert d["ops"][1]["settings"] == {"p": 0.3}
    assert set(d["param_arrays"]) == set(param_array_specs(spec)) == {"crop", "flip"}
    assert ViewSpec.from_dict(d["spec"]) == spec


def test_describe_mixed_includes_mix_before_normalize():
    spec = ViewSpec(mix="both", mixup_alpha=0.4)
    d = ViewPipeline(spec).describe()
    assert d["op_order"] == ["resized_crop", "horizontal_flip", "to_float_0_1", "mix", "normalize"]
    mix = d["ops"][3]
    assert mix["settings"]["mode"] == "both" and mix["settings"]["mixup_alpha"] == 0.4
    assert set(mix["recorded"]) <= set(d["param_arrays"])
    assert all(op["apply"] for op in d["ops"])
