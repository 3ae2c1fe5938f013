"""Replayable augmented views: parameters are sampled separately from being applied.

kdcache runs a teacher once over augmented views and records each view's parameters
next to the teacher's outputs; a student later replays each view from the recorded
parameters and sees pixel-identical input. Parameters depend only on
(base seed, sample key, view index) through :func:`derive_view_seed`.
"""

from kdcache.augment._describe import describe_spec, kernel_versions
from kdcache.augment._params import ViewParams, param_array_specs
from kdcache.augment._pipeline import ViewPipeline
from kdcache.augment._presets import PRESETS
from kdcache.augment._seeding import derive_view_seed
from kdcache.augment._spec import ViewSpec

__all__ = ["PRESETS", "describe_spec", "kernel_versions", "ViewParams", "ViewPipeline", "ViewSpec", "derive_view_seed",
           "param_array_specs"]
