"""The embedding codec: float16, and int8 with one float32 scale per vector (round trips, bytes, edge rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kdcache.cache._embcodec import EMBEDDING_DTYPES, EmbeddingCodec, row_cosine
from kdcache.errors import ConfigError, TeacherOutputError

RNG = np.random.default_rng(0)


def _batch(n: int = 64, d: int = 96) -> np.ndarray:
    return RNG.standard_normal((n, d)).astype(np.float32) * RNG.uniform(0.01, 50, size=(n, 1)).astype(np.float32)


def test_float16_round_trip_is_float16_rounding():
    x = _batch()
    codec = EmbeddingCodec("float16")
    arrays = codec.encode(x)
    assert set(arrays) == {"values"} and arrays["values"].dtype == np.float16 and arrays["values"].shape == x.shape
    y = codec.decode(arrays)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0**-11 + 2.0**-24)


def test_int8_is_symmetric_per_vector_with_round_to_nearest():
    x = np.array([[1.0, -2.0, 0.5, 127.0], [0.0, 0.0, -3.0, 0.001]], dtype=np.float32)
    arrays = EmbeddingCodec("int8").encode(x)
    assert arrays["values"].dtype == np.int8 and arrays["scales"].dtype == np.float32
    np.testing.assert_array_equal(arrays["scales"], np.float32([127.0 / 127, 3.0 / 127]))
    np.testing.assert_array_equal(arrays["values"], [[1, -2, 0, 127], [0, 0, -127, 0]])  # 0.5 ties to even


def test_int8_error_is_at_most_half_a_step_of_the_vector_scale():
    x = _batch()
    codec = EmbeddingCodec("int8")
    arrays = codec.encode(torch.from_numpy(x))  # a torch batch encodes as its numpy array does
    y = codec.decode(arrays)
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-5))
    assert np.abs(arrays["values"]).max() == 127  # every vector's largest component uses the full range
    assert row_cosine(x, y).min() > 0.999


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_round_trips_stay_within_their_bounds(x):
    for dtype in EMBEDDING_DTYPES:
        codec = EmbeddingCodec(dtype)
        y = codec.decode(codec.encode(x))
        assert y.shape == x.shape and np.isfinite(y).all()
        bound = (np.abs(x) * 2.0**-11 + 2.0**-24 if dtype == "float16"
                 else np.abs(x).max(axis=1, keepdims=True) / 254 * (1 + 1e-5) + 1e-30)
        assert np.all(np.abs(y - x) <= bound)


def test_bytes_per_vector_and_stored_arrays():
    assert EmbeddingCodec("float16").bytes_per_vector(768) == 1536
    assert EmbeddingCodec("int8").bytes_per_vector(768) == 772
    assert EmbeddingCodec("int8").arrays(64) == {"values": ((64,), "int8"), "scales": ((), "float32")}
    assert EmbeddingCodec("float16").arrays(64) == {"values": ((64,), "float16")}
    for dtype in EMBEDDING_DTYPES:  # the stated bytes are the encoded arrays' bytes
        arrays = EmbeddingCodec(dtype).encode(_batch(5, 64))
        assert sum(a.nbytes for a in arrays.values()) == 5 * EmbeddingCodec(dtype).bytes_per_vector(64)
    with pytest.raises(ConfigError, match="positive integer, got 0"):
        EmbeddingCodec("int8").bytes_per_vector(0)


def test_zero_vectors_decode_to_zero():
    x = np.zeros((3, 8), dtype=np.float32)
    x[1] = np.linspace(-1, 1, 8)
    for dtype in EMBEDDING_DTYPES:
        codec = EmbeddingCodec(dtype)
        y = codec.decode(codec.encode(x))
        assert np.all(y[[0, 2]] == 0) and np.isfinite(y).all()
    assert EmbeddingCodec("int8").encode(x)["scales"][0] == 0


@pytest.mark.parametrize("dtype", EMBEDDING_DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_one_line_naming_the_row(dtype, bad):
    x = _batch(6, 4)
    x[4, 2] = bad
    x[5, 0] = bad
    with pytest.raises(TeacherOutputError) as e:
        EmbeddingCodec(dtype).encode(x)
    msg = str(e.value)
    assert msg.startswith("embedding row 4 is not finite") and "2 of 6 rows" in msg and "\n" not in msg


def test_float16_overflow_is_refused_naming_the_row():
    x = np.ones((3, 4), dtype=np.float32)
    x[2, 1] = 70000.0
    with pytest.raises(TeacherOutputError, match=r"^embedding row 2 overflows float16"):
        EmbeddingCodec("float16").encode(x)
    y = EmbeddingCodec("int8").decode(EmbeddingCodec("int8").encode(x))  # int8 stores it
    assert abs(y[2, 1] - 70000.0) <= 70000.0 / 254


def test_bad_dtype_shape_and_config_round_trip():
    with pytest.raises(ConfigError, match="one of float16, int8, got 'bf16'"):
        EmbeddingCodec("bf16")
    with pytest.raises(ConfigError, match=r"\(N, D\) batch"):
        EmbeddingCodec("int8").encode(np.zeros(4, dtype=np.float32))
    assert EmbeddingCodec.from_dict(EmbeddingCodec("int8").to_dict()) == EmbeddingCodec("int8")


def test_row_cosine():
    a = np.array([[1, 0], [1, 1], [0, 0], [0, 0]], dtype=np.float32)
    b = np.array([[0, 1], [2, 2], [0, 0], [1, 0]], dtype=np.float32)
    np.testing.assert_allclose(row_cosine(a, b), [0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ConfigError, match="shapes"):
        row_cosine(a, b[:2])
