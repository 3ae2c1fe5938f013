"""Shared fixtures: deterministic seeds, paths to the shared offline data and weights."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_CIFAR = SHARED / "data" / "cifar10.h5"
SHARED_WEIGHTS = SHARED / "weights"

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_cifar() -> Path:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"shared dataset not found: {SHARED_CIFAR}")
    return SHARED_CIFAR


@pytest.fixture
def shared_weights() -> Path:
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"shared weights not found: {SHARED_WEIGHTS}")
    return SHARED_WEIGHTS
