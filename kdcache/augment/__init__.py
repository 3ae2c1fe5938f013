"""Replayable augmented views: parameters are sampled separately from being applied.

kdcache runs a teacher once over augmented views and records each view's parameters
next to the teacher's outputs; a student later replays each view from the recorded
parameters and sees pixel-identical input. Parameters depend only on
(base seed, sample key, view index) through :func:`derive_view_seed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache._lazy import lazy_names

if TYPE_CHECKING:
    from kdcache.augment._describe import describe_spec, kernel_versions
    from kdcache.augment._params import ViewParams, param_array_specs
    from kdcache.augment._pipeline import ViewPipeline
    from kdcache.augment._presets import PRESETS
    from kdcache.augment._seeding import derive_view_seed
    from kdcache.augment._spec import ViewSpec

# name -> the module that defines it, imported on first access: the view spec and presets (what the CLI's
# options are built from) need neither torch nor torchvision, the pipeline both
_LAZY = {"describe_spec": "._describe", "kernel_versions": "._describe", "ViewParams": "._params",
         "param_array_specs": "._params", "ViewPipeline": "._pipeline", "PRESETS": "._presets",
         "derive_view_seed": "._seeding", "ViewSpec": "._spec"}

__all__ = ["PRESETS", "describe_spec", "kernel_versions", "ViewParams", "ViewPipeline", "ViewSpec", "derive_view_seed",
           "param_array_specs"]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
