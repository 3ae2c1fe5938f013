"""derive_view_seed: a pure function of (base seed, key, view)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcache.augment import ViewSpec, derive_view_seed, describe_spec
from kdcache.errors import ConfigError


@settings(max_examples=200, deadline=None)
@given(base=st.integers(-(2**70), 2**70), key=st.text(max_size=40), view=st.integers(0, 10**6))
def test_seed_is_63_bit_and_follows_the_documented_encoding(base, key, view):
    seed = derive_view_seed(base, key, view)
    assert 0 <= seed < 2**63
    assert seed == derive_view_seed(base, key, view)
    # The encoding is published in describe_spec(ViewSpec)["seeding"]; check it matches the code.
    message = json.dumps(["kdcache.view-seed.v1", base, key, view], separators=(",", ":"), ensure_ascii=False)
    assert seed == int.from_bytes(hashlib.sha256(message.encode("utf-8")).digest()[:8], "big") >> 1
    assert "kdcache.view-seed.v1" in describe_spec(ViewSpec())["seeding"]


def test_different_inputs_give_different_seeds():
    seeds = {derive_view_seed(b, k, v) for b in range(3) for k in ("a", "b", "a1", "") for v in range(4)}
    assert len(seeds) == 3 * 4 * 4
    # Concatenation ambiguity must not collide.
    assert derive_view_seed(0, "a1", 2) != derive_view_seed(0, "a", 12)


@pytest.mark.parametrize(
    ("args", "bad"),
    [((1.5, "k", 0), "1.5"), ((0, 7, 0), "7"), ((0, "k", -1), "-1"), ((True, "k", 0), "True")],
)
def test_bad_arguments(args, bad):
    with pytest.raises(ConfigError, match=bad):
        derive_view_seed(*args)
