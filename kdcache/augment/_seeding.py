"""Per-view seeds and the seeded random stream every view's parameters are drawn from.

A view's parameters must depend only on (base seed, sample key, view index): not on
worker count, batch size, iteration order, process, or whatever else touched torch's
global RNG before. :func:`derive_view_seed` hashes the three into a seed, and
:func:`seeded_stream` runs sampling code on torch's CPU generator seeded with it,
restoring the caller's generator state afterwards. torchvision's ``make_params``
draw from the global generator, which is why the stream is the global generator
(temporarily) rather than a private ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kdcache.errors import ConfigError

__all__ = ["SEED_DOMAIN", "derive_view_seed", "seeded_stream"]

# Part of the hashed message, so seeds derived here never collide with another use of the same triple.
# Changing it changes every view of every cache: bump only with the cache format version.
SEED_DOMAIN = "kdcache.view-seed.v1"

_MAX_SEED = 2**64  # torch.Generator.manual_seed accepts [0, 2**64)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def derive_view_seed(base_seed: int, key: str, view: int) -> int:
    """A 63-bit non-negative seed from sha256 over a canonical encoding of ``(base_seed, key, view)``.

    The encoding is compact JSON of ``[SEED_DOMAIN, base_seed, key, view]`` in UTF-8
    (so ``("a1", 2)`` and ``("a", 12)`` cannot collide); the seed is the first 8 bytes of
    the digest, big-endian, shifted right by one bit. No process state is involved.
    """
    if not _is_int(base_seed):
        raise ConfigError(f"base_seed must be an integer, got {base_seed!r}")
    if not isinstance(key, str):
        raise ConfigError(f"sample key must be a string, got {key!r}")
    if not _is_int(view) or view < 0:
        raise ConfigError(f"view index must be a non-negative integer, got {view!r}")
    message = json.dumps([SEED_DOMAIN, base_seed, key, view], separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(message.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@contextmanager
def seeded_stream(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU generator seeded to ``seed``; restore its previous state afterwards.

    Only the CPU default generator is seeded (``torch.manual_seed`` would also reseed CUDA
    generators, which ``fork_rng(devices=[])`` would not restore). The global generator is
    shared by all threads of a process, so sampling must not run concurrently in threads;
    DataLoader workers are processes and are unaffected.
    """
    if not _is_int(seed) or not 0 <= seed < _MAX_SEED:
        raise ConfigError(f"view seed must be an integer in [0, 2**64), got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
