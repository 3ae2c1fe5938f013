"""Format-2 top-k targets: quantised values relative to the top logit, within the documented bound."""

import math

import numpy as np
import pytest
import torch

from kdcache.cache._targets import TOPK_MAX_INCREMENT, TOPK_STEP, TargetMode, decode_targets
from kdcache.train._losses import teacher_log_probs


def _logits(n: int, c: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * torch.rand(n, 1, generator=g) * 8  # flat to very peaked rows
    z[: n // 4, 0] += 40.0  # a quarter of the rows: one class far above every other (beyond uint8 steps)
    return z


def _roundtrip(z: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    stored = TargetMode("topk", k).encode(z)
    return decode_targets({n: torch.from_numpy(v) for n, v in stored.items()})


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_decoded_values_stay_within_half_a_step_of_the_teachers_relative_logits(k):
    z = _logits(400, 50)
    out = _roundtrip(z, k)
    values, indices = torch.topk(z, k, dim=1)
    assert torch.equal(out["topk_indices"].long(), indices)
    assert torch.equal(out["argmax"].long(), z.argmax(1))
    rel = values - values[:, :1]
    err = (out["topk_values"] - rel).abs()
    assert float(err.max()) <= TOPK_STEP / 2 + 1e-6
    if k > 1:
        assert float(rel.min()) < -255 * TOPK_STEP  # gaps a uint8 step count could not hold are exact too
    tail = torch.logsumexp(z.scatter(1, indices, float("-inf")), dim=1) - values[:, 0]
    if k == z.shape[1]:
        assert torch.all(torch.isneginf(out["topk_tail_lse"]))
    else:
        assert torch.allclose(out["topk_tail_lse"], tail, rtol=2 ** -11, atol=1e-3)


def test_the_student_rebuilds_the_teachers_distribution_almost_exactly():
    z = _logits(400, 1000, seed=1)
    for k in (5, 20):
        out = _roundtrip(z, k)
        values, indices = torch.topk(z, k, 1)
        tail = torch.logsumexp(z.scatter(1, indices, float("-inf")), 1)
        exact = teacher_log_probs({"topk_values": values, "topk_indices": indices, "topk_tail_lse": tail}, 1000, 1.0)
        rebuilt = teacher_log_probs(out, 1000, 1.0)
        kl = float((exact.exp() * (exact - rebuilt)).sum(1).mean())
        assert 0 <= kl < 1e-3
        # relative values leave the softmax unchanged; each probability moves by at most the value error
        # (TOPK_STEP / 2) plus the normaliser's (the same): |q / p - 1| <= e^TOPK_STEP - 1
        p, q = exact.exp(), rebuilt.exp()
        assert torch.all((p - q).abs() <= (math.exp(TOPK_STEP) - 1) * p + 1e-6)


def test_format1_arrays_keep_their_encoding_and_decode_unchanged():
    z = _logits(50, 20)
    names = ("topk_values", "topk_indices", "topk_tail_lse", "argmax")
    stored = TargetMode("topk", 4).encode(z, names)
    assert sorted(stored) == sorted(names) and stored["topk_values"].dtype == np.float16
    out = decode_targets({n: torch.from_numpy(v) for n, v in stored.items()})
    assert torch.equal(out["topk_values"], torch.from_numpy(stored["topk_values"]))
    assert np.array_equal(stored["argmax"], z.argmax(1).numpy())


def test_steps_are_small_increments_and_saturate_only_beyond_4096_logits():
    z = _logits(200, 1000, seed=2)
    stored = TargetMode("topk", 10).encode(z)
    steps = stored["topk_steps"]
    assert steps.dtype == np.uint16 and steps.shape == (200, 9)
    assert np.median(steps) < 16  # increments between neighbours are mostly small: they compress to a few bits
    assert math.isclose(TOPK_STEP, 1 / 16)
    # a gap beyond the largest increment: what follows decodes closer to the top, but still >= 4096 below it
    z = torch.tensor([[0.0, -1.0, -6000.0, -6001.0]])
    out = _roundtrip(z, 4)
    assert out["topk_values"][0, :2].tolist() == [0.0, -1.0]
    assert float(out["topk_values"][0, 2]) == -1.0 - TOPK_MAX_INCREMENT * TOPK_STEP
    assert float(out["topk_values"][0, 3]) - float(out["topk_values"][0, 2]) == -1.0
