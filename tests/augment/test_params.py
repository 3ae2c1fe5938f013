"""make_params: determined by the seed alone; parameter arrays round-trip exactly."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcache.augment import ViewParams, ViewPipeline, ViewSpec, derive_view_seed, param_array_specs
from kdcache.errors import ConfigError, DataError

N = 50


def size_of(i: int) -> tuple[int, int]:
    return (20 + i % 7, 30 + i % 5)


def _sample(pipe: ViewPipeline, jobs, base_seed: int = 7) -> dict:
    return {
        (key, view): pipe.make_params(
            derive_view_seed(base_seed, key, view), size_of(int(key)), num_samples=N, size_of=size_of
        )
        for key, view in jobs
    }


JOBS = [(str(k), v) for k in range(12) for v in range(3)]

_CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys, torch
    torch.manual_seed(int(sys.argv[1]))  # different global state in each process
    torch.set_num_threads(1)
    torch.rand(int(sys.argv[1]) + 3)
    from kdcache.augment import ViewPipeline, ViewSpec, derive_view_seed
    N = 50
    def size_of(i):
        return (20 + i % 7, 30 + i % 5)
    pipe = ViewPipeline(ViewSpec(mix="both", mix_prob=0.7))
    jobs = [(str(k), v) for k in range(12) for v in range(3)]
    out = [dataclasses.asdict(pipe.make_params(derive_view_seed(7, k, v), size_of(int(k)),
                                               num_samples=N, size_of=size_of)) for k, v in jobs]
    print(json.dumps(out))
    """
)


def test_params_identical_across_fresh_processes():
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(s)], stdout=subprocess.PIPE, text=True)
        for s in (1, 2)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    local = _sample(ViewPipeline(ViewSpec(mix="both", mix_prob=0.7)), JOBS)
    as_json = json.loads(
        json.dumps([{f: getattr(local[j], f) for f in ViewParams.__dataclass_fields__} for j in JOBS])
    )
    assert outs[0] == outs[1] == as_json
    # The jobs must exercise every branch, or the comparison proves little.
    kinds = {p["mix_kind"] for p in outs[0]}
    assert kinds == {0, 1, 2}


def test_params_do_not_depend_on_call_order_or_global_rng():
    pipe = ViewPipeline(ViewSpec(mix="both"))
    forward = _sample(pipe, JOBS)
    torch.manual_seed(1234)
    torch.rand(17)
    backward = _sample(ViewPipeline(ViewSpec(mix="both")), list(reversed(JOBS)))
    assert forward == backward


def test_pickled_pipeline_samples_the_same_params():
    # DataLoader workers started with "spawn" receive a pickled pipeline.
    pipe = ViewPipeline(ViewSpec(mix="both"))
    clone = pickle.loads(pickle.dumps(pipe))
    assert _sample(clone, JOBS[:8]) == _sample(pipe, JOBS[:8])


def test_different_views_keys_and_seeds_give_different_params():
    pipe = ViewPipeline(ViewSpec())
    crops = [
        pipe.make_params(derive_view_seed(b, k, v), (64, 64)).crop
        for b in range(2)
        for k in ("x", "y")
        for v in range(5)
    ]
    assert len(set(crops)) == len(crops)


def test_make_params_leaves_global_rng_untouched():
    pipe = ViewPipeline(ViewSpec(mix="both"))
    before = torch.get_rng_state()
    expected_next = torch.rand(4)
    torch.set_rng_state(before)
    for key, view in JOBS[:10]:
        pipe.make_params(derive_view_seed(0, key, view), (40, 40), num_samples=N, size_of=size_of)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(4), expected_next)


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 400),
    w=st.integers(1, 400),
    seed=st.integers(0, 2**63 - 1),
    mix=st.sampled_from(["none", "mixup", "cutmix", "both"]),
    size=st.integers(1, 48),
)
def test_crops_lie_within_images_and_boxes_within_output(h, w, seed, mix, size):
    pipe = ViewPipeline(ViewSpec(size=size, mix=mix, scale=(0.08, 1.0)))
    p = pipe.make_params(seed, (h, w), num_samples=5, size_of=lambda i: (h + i, w + 2 * i))
    for (top, left, ch, cw), (ih, iw) in [
        (p.crop, (h, w)),
        *([(p.partner_crop, (h + p.partner, w + 2 * p.partner))] if p.is_mixed else []),
    ]:
        assert 0 <= top and 0 <= left and ch >= 1 and cw >= 1
        assert top + ch <= ih and left + cw <= iw
    if p.is_mixed:
        assert 0 <= p.partner < 5
        assert 0.0 <= p.lam <= 1.0 and p.lam == float(np.float32(p.lam))
    if p.mix_kind == 2:
        y0, x0, y1, x1 = p.box
        assert 0 <= y0 <= y1 <= size and 0 <= x0 <= x1 <= size


def test_cutmix_lam_is_area_corrected():
    size = 24
    pipe = ViewPipeline(ViewSpec(size=size, mix="cutmix"))
    lams = []
    for v in range(40):
        p = pipe.make_params(derive_view_seed(3, "s", v), (30, 30), num_samples=N, size_of=size_of)
        y0, x0, y1, x1 = p.box
        assert p.mix_kind == 2
        assert p.lam == float(np.float32(1.0 - (y1 - y0) * (x1 - x0) / size**2))
        lams.append(p.lam)
    assert len(set(lams)) > 10 and min(lams) < 0.9


def test_mix_prob_and_kind_choice():
    def kinds(spec):
        pipe = ViewPipeline(spec)
        return [
            pipe.make_params(derive_view_seed(0, "k", v), (32, 32), num_samples=N, size_of=size_of).mix_kind
            for v in range(200)
        ]

    assert set(kinds(ViewSpec(mix="mixup"))) == {1}
    assert set(kinds(ViewSpec(mix="cutmix"))) == {2}
    assert set(kinds(ViewSpec(mix="both", mix_prob=0.0))) == {0}
    both = kinds(ViewSpec(mix="both", mix_prob=0.5))
    assert 50 < both.count(0) < 150 and both.count(1) > 20 and both.count(2) > 20


def test_mixed_spec_needs_num_samples_and_size_of():
    pipe = ViewPipeline(ViewSpec(mix="mixup"))
    with pytest.raises(ConfigError, match="num_samples"):
        pipe.make_params(1, (32, 32))
    with pytest.raises(ConfigError, match="size_of"):
        pipe.make_params(1, (32, 32), num_samples=4)
    with pytest.raises(ConfigError, match="0"):
        pipe.make_params(1, (32, 32), num_samples=0, size_of=size_of)


@pytest.mark.parametrize(
    ("seed", "hw", "error"),
    [(-1, (8, 8), ConfigError), (2**64, (8, 8), ConfigError), (1, (0, 8), DataError), (1, (8,), DataError)],
)
def test_bad_seed_or_size(seed, hw, error):
    with pytest.raises(error):
        ViewPipeline(ViewSpec()).make_params(seed, hw)


@pytest.mark.parametrize("mix", ["none", "mixup", "cutmix", "both"])
def test_arrays_round_trip_exactly_with_declared_dtypes(mix):
    spec = ViewSpec(mix=mix, mix_prob=0.8)
    pipe = ViewPipeline(spec)
    params = [
        pipe.make_params(derive_view_seed(0, str(i), 0), size_of(i), num_samples=N, size_of=size_of)
        for i in range(20)
    ]
    arrays = pipe.params_to_arrays(params)
    specs = param_array_specs(spec)
    assert list(arrays) == list(specs)
    for name, (shape, dtype) in specs.items():
        assert arrays[name].shape == (20, *shape) and arrays[name].dtype == np.dtype(dtype), name
    assert [pipe.params_from_arrays(arrays, i) for i in range(20)] == params
    empty = pipe.params_to_arrays([])
    assert all(empty[n].shape == (0, *s) for n, (s, _) in specs.items())


def test_unmixed_arrays_reject_mixed_params_and_missing_arrays_are_named():
    pipe = ViewPipeline(ViewSpec())
    mixed = ViewParams(crop=(0, 0, 4, 4), flip=False, mix_kind=1, partner=2, lam=0.5)
    with pytest.raises(ConfigError, match="mix"):
        pipe.params_to_arrays([mixed])
    with pytest.raises(DataError, match="mix_lam"):
        ViewPipeline(ViewSpec(mix="mixup")).params_from_arrays(pipe.params_to_arrays([]), 0)
