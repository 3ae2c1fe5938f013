"""Which teacher (a torch-free config, so the CLI's options and configs need no torch): see ``kdcache._teacher``
for building one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdcache._config import ConfigBase
from kdcache._utils import check_model_kwargs
from kdcache.errors import ConfigError

__all__ = ["TeacherSpec", "truthy"]


@dataclass(frozen=True)
class TeacherSpec(ConfigBase):
    """Which teacher: a registered/torchvision/timm/hf/python name and/or a weights file or directory."""

    name: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    random_init: bool = False    # no weights on purpose: a seeded initialisation (tests, benchmarks)
    init_seed: int = 0           # the seed of that initialisation

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_kwargs(self.kwargs, "teacher_args")
        if self.random_init and self.weights:
            raise ConfigError("`random_init` and `teacher_weights` exclude each other: a teacher either loads "
                              "weights or is initialised at random")
        if self.random_init and truthy(self.kwargs.get("pretrained")):
            raise ConfigError("`random_init` and pretrained=true exclude each other")
        if not self.random_init and self.init_seed != 0:
            raise ConfigError("`init_seed` only applies with `random_init`")


def truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))
