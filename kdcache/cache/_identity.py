"""What a cache *is*: the parts that must match for cached targets to be valid.

The fingerprint is a sha256 over the canonical JSON of the identity's parts:
teacher (name, constructor kwargs, weights sha256), dataset (source kind, split,
manifest sha256 over keys and labels), view spec, base seed and target mode.
The number of views is deliberately *not* part of it: views can be added later
without changing what existing views mean. The dataset's path is not part of it
either (only its kind and manifest), so a copied or re-mounted dataset still matches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CacheIdentity", "canonical_json", "sha256_json", "dataset_identity", "dataset_differences",
           "recorded_subset"]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@dataclass(frozen=True)
class CacheIdentity:
    teacher: dict[str, Any]    # {"name", "kwargs", "weights_sha256"}
    dataset: dict[str, Any]    # {"kind", "split", "manifest_sha256"}
    view_spec: dict[str, Any]  # ViewSpec.to_dict()
    seed: int
    targets: str               # "full" or "topk:K"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheIdentity":
        return cls(teacher=dict(d["teacher"]), dataset=dict(d["dataset"]), view_spec=dict(d["view_spec"]),
                   seed=int(d["seed"]), targets=str(d["targets"]))

    @property
    def fingerprint(self) -> str:
        return sha256_json(self.to_dict())

    def differences(self, other: "CacheIdentity") -> list[str]:
        """Human-readable list of the parts that differ, e.g. ``["teacher.weights_sha256: 1a2b… != 9f8e…"]``."""
        a, b = self.to_dict(), other.to_dict()
        out: list[str] = []
        for part in ("teacher", "dataset", "view_spec", "seed", "targets"):
            va, vb = a[part], b[part]
            if va == vb:
                continue
            if isinstance(va, dict) and isinstance(vb, dict):
                for k in sorted(set(va) | set(vb)):
                    if va.get(k) != vb.get(k):
                        out.append(f"{part}.{k}: {_short(va.get(k))} != {_short(vb.get(k))}")
            else:
                out.append(f"{part}: {_short(va)} != {_short(vb)}")
        return out


def _short(v: Any) -> str:
    s = canonical_json(v)
    return s if len(s) <= 40 else s[:37] + "..."


def dataset_identity(ds: Any) -> dict[str, Any]:
    """A dataset's part of the identity: its kind (not its path), split and manifest hash."""
    return {"kind": ds.source.split(":", 1)[0], "split": ds.split, "manifest_sha256": ds.manifest_hash()}


def dataset_differences(cached: dict[str, Any], ds: Any, attrs: dict[str, Any] | None = None) -> list[str]:
    """What differs between a cache's dataset identity and ``ds`` (empty when they match); with the cache's
    ``attrs``, a last entry says which subset (``limit``, ``subset_seed``) the cache was made from."""
    have = dataset_identity(ds)
    diffs = [f"{k}: {have.get(k)!r} (`data`) != {cached.get(k)!r} (cache)" for k in sorted(cached)
             if have.get(k) != cached.get(k)]
    hint = _subset_hint(attrs, len(ds)) if diffs and attrs else None
    return diffs + [hint] if hint else diffs


def recorded_subset(attrs: dict[str, Any]) -> tuple[int, int] | None:
    """(limit, subset_seed) of the seeded subset a cache was made from, as its config records; None: all."""
    data = (attrs.get("config") or {}).get("data") or {}
    n = (attrs.get("dataset") or {}).get("num_samples")
    if data.get("limit") is None or (n is not None and int(data["limit"]) > int(n)):  # a limit over the size: all
        return None
    return int(data["limit"]), int(data.get("subset_seed") or 0)


def _subset_hint(attrs: dict[str, Any], have: int) -> str | None:
    subset = recorded_subset(attrs)
    n = (attrs.get("dataset") or {}).get("num_samples")
    if subset is not None:
        limit, seed = subset
        return (f"the cache was made from a {limit:,}-image subset (seed {seed}) of its split and this data has "
                f"{have:,} images: give `limit` {limit} and `subset_seed` {seed}")
    if "limit" in ((attrs.get("config") or {}).get("data") or {}) and n is not None and have < int(n):
        return f"the cache was made from all {int(n):,} images of its split and this data has {have:,}: drop `limit`"
    return None
