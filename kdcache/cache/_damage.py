"""What damage is: one damaged chunk (:class:`Damage`) and the one-line error that names it.

Kept apart from the scan (``integrity.py``) so the store, which raises these errors on every checked
read, and the scan, which walks a store, import it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kdcache.errors import CacheDamagedError

__all__ = ["Damage", "damage_error", "REPAIR_HINT"]

REPAIR_HINT = "rerun the dump-teacher command that made this cache to repair it (it recomputes damaged units)"
_PROBLEMS = ("missing", "corrupt", "nonfinite")


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: which array, which unit (per-view arrays) or sample rows, what is wrong."""

    array: str
    problem: str                     # "missing" | "corrupt" | "nonfinite"
    location: str                    # the chunk's path (file or URL)
    block: int | None = None         # per-view arrays and done: the unit (block, view)
    view: int | None = None
    samples: tuple[int, int] = (0, 0)  # rows [start, stop) the chunk holds
    detail: str = ""

    def __post_init__(self):
        if self.problem not in _PROBLEMS:
            raise ValueError(f"problem must be one of {_PROBLEMS}, got {self.problem!r}")

    @property
    def unit(self) -> tuple[int, int] | None:
        return None if self.view is None else (int(self.block), int(self.view))

    def describe(self) -> str:
        if self.view is not None:
            where = f"block {self.block}, view {self.view}"
        else:
            where = f"samples {self.samples[0]}-{self.samples[1] - 1}"
        what = {"missing": "is missing (deleted or never written)",
                "corrupt": f"is corrupt ({self.detail})",
                "nonfinite": f"holds {self.detail}"}[self.problem]
        return f"{self.array} chunk of {where} {what} [{self.location}]"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        d["message"] = self.describe()
        return d


def damage_error(path: str, damage: list[Damage]) -> CacheDamagedError:
    """One line: the first damaged chunk, how many more, and how to repair."""
    more = f" (and {len(damage) - 1} more damaged chunks)" if len(damage) > 1 else ""
    return CacheDamagedError(f"cache {path}: {damage[0].describe()}{more}; {REPAIR_HINT}", damage)


