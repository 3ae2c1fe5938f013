"""``ViewSpec``: the fixed settings of the replayable view pipeline.

A spec holds no randomness. Together with the recorded per-view parameters
(:class:`~kdcache.augment._params.ViewParams`) it determines every pixel of a view,
so it is stored in the cache's attributes and compared before a student replays
the cache. Validation happens in ``__post_init__`` so a bad value fails where it is
written, with the value quoted, instead of deep inside a dump.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kdcache.augment._autoaug_config import parse_auto_augment
from kdcache.errors import ConfigError

__all__ = ["CROP_MODES", "ERASE_MODES", "INTERPOLATIONS", "MIX_MODES", "PAD_MODES", "ViewSpec"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
MIX_MODES = ("none", "mixup", "cutmix", "both")
CROP_MODES = ("rrc", "pad")
PAD_MODES = ("zero", "reflect", "edge", "symmetric")
ERASE_MODES = ("const", "rand", "pixel")

_TUPLE_FIELDS = ("scale", "ratio", "mean", "std", "color_jitter", "re_area", "re_aspect")
# Settings that shape only the deterministic evaluation view, never a training view: not part of what a
# cached view is (a cache's identity), so changing them never invalidates a cache.
EVAL_ONLY_FIELDS = ("crop_pct",)
# Settings added with cache format 3 (pad-crop, auto-augment, colour jitter, 3-Augment, erasing). At their
# defaults they change nothing, and a cache's identity leaves them out, so older caches keep their fingerprint.
FORMAT3_FIELDS = ("crop", "padding", "padding_mode", "crop_resize", "auto_augment", "color_jitter", "three_augment", "reprob",
                  "remode", "recount", "re_area", "re_aspect")


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float; bools and non-numbers are rejected (``True`` is not a probability)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"ViewSpec.{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"ViewSpec.{name} must be finite, got {value!r}")
    return value


def _numbers(name: str, value: Any, length: int) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != length:
        raise ConfigError(f"ViewSpec.{name} must be a sequence of {length} numbers, got {value!r}")
    try:
        return tuple(_number(name, v) for v in value)
    except ConfigError:
        raise ConfigError(f"ViewSpec.{name} must hold {length} finite numbers, got {value!r}") from None


def _probability(name: str, value: Any) -> float:
    p = _number(name, value)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"ViewSpec.{name} must lie in [0, 1], got {value!r}")
    return p


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"ViewSpec.{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class ViewSpec:
    """Fixed settings of a training view: RandomResizedCrop, flip, optional MixUp/CutMix, normalisation.

    ``size`` is the output side in pixels; ``scale`` and ``ratio`` bound the crop's area
    fraction and aspect ratio exactly as in ``torchvision.transforms.v2.RandomResizedCrop``.
    ``mix`` chooses ``none``, ``mixup``, ``cutmix`` or ``both`` (a 50/50 choice per view);
    a view is mixed with probability ``mix_prob``. ``crop_pct`` only shapes the evaluation view
    (timm's convention): the shorter side is resized to ``floor(size / crop_pct)``, then the centre
    ``size`` x ``size`` is cropped; 1.0 resizes the shorter side to ``size`` itself.
    """

    # ``help`` is the one description of each setting (the CLI builds its view options from it).
    size: int = field(default=32, metadata={"help": "View side in pixels."})
    scale: tuple[float, float] = field(default=(0.25, 1.0), metadata={"help": "RandomResizedCrop area range."})
    ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3),
                                       metadata={"help": "RandomResizedCrop aspect-ratio range."})
    interpolation: str = field(default="bilinear", metadata={"help": "Resize interpolation.",
                                                             "choices": INTERPOLATIONS})
    antialias: bool = field(default=True, metadata={"help": "Antialias when downscaling."})
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    mean: tuple[float, float, float] = field(default=(0.485, 0.456, 0.406),
                                             metadata={"help": "Normalisation mean (RGB)."})
    std: tuple[float, float, float] = field(default=(0.229, 0.224, 0.225),
                                            metadata={"help": "Normalisation std (RGB)."})
    mix: str = field(default="none", metadata={"help": "Mix views with a partner sample (recorded, replayed).",
                                               "choices": MIX_MODES})
    mixup_alpha: float = field(default=0.8, metadata={"help": "MixUp Beta(a, a)."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix Beta(a, a)."})
    mix_prob: float = field(default=1.0, metadata={"help": "Probability that a view is mixed."})
    crop_pct: float = field(default=1.0, metadata={
        "help": "Eval view only: resize the shorter side to size / crop_pct, then centre-crop size."})
    crop: str = field(default="rrc", metadata={
        "help": "Crop: rrc (RandomResizedCrop over scale/ratio) or pad (shorter side resized to size if it "
                "differs, padded by --padding, a random size x size crop: CIFAR's RandomCrop(32, padding=4)).",
        "choices": CROP_MODES})
    padding: int = field(default=4, metadata={"help": "Pad-crop: pixels of padding on each side.", "min": 0})
    padding_mode: str = field(default="zero", metadata={"help": "Pad-crop: padding fill.", "choices": PAD_MODES})
    crop_resize: int = field(default=0, metadata={
        "help": "Pad-crop: resize the shorter side to this before padding and cropping (0: the view size), e.g. "
                "52 with --size 48 --padding 0: resize 32 -> 52, random 48 crop (the Keras TokenLearner example).",
        "min": 0})
    auto_augment: str = field(default="none", metadata={
        "help": "none | timm's RandAugment string (rand-m9-mstd0.5-inc1, rand-m9-n3-mstd1, ...) | "
                "trivialaugment (torchvision's TrivialAugmentWide) | autoaugment (torchvision's ImageNet policy)."})
    color_jitter: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0), metadata={
        "help": "Colour jitter brightness, contrast, saturation, hue (torchvision's ColorJitter, random order); "
                "one number B sets B, B, B, 0 (timm's --color-jitter).", "broadcast": True})
    three_augment: bool = field(default=False, metadata={
        "help": "DeiT III's 3-Augment: one of grayscale, solarize, Gaussian blur per view (before colour jitter)."})
    reprob: float = field(default=0.0, metadata={"help": "Random erasing probability (timm's RandomErasing)."})
    remode: str = field(default="const", metadata={"help": "Random erasing fill: const (0 after normalisation), "
                                                           "rand (per-channel noise), pixel (per-pixel noise).",
                                                   "choices": ERASE_MODES})
    recount: int = field(default=1, metadata={"help": "Random erasing: at most this many boxes (1..recount)."})
    re_area: tuple[float, float] = field(default=(0.02, 1 / 3),
                                         metadata={"help": "Random erasing: area range (fraction of the view)."})
    re_aspect: tuple[float, float] = field(default=(0.3, 1 / 0.3),
                                           metadata={"help": "Random erasing: aspect-ratio range."})

    def __post_init__(self) -> None:
        # Normalise containers and numbers so that equal specs compare and hash equal
        # whether they came from Python literals, YAML lists or a cache's JSON attributes.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"ViewSpec.size must be a positive integer, got {self.size!r}")

        scale = _numbers("scale", self.scale, 2)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"ViewSpec.scale must satisfy 0 < min <= max <= 1, got {self.scale!r}")
        put("scale", scale)

        ratio = _numbers("ratio", self.ratio, 2)
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"ViewSpec.ratio must satisfy 0 < min <= max, got {self.ratio!r}")
        put("ratio", ratio)

        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        if not isinstance(self.antialias, bool):
            raise ConfigError(f"ViewSpec.antialias must be true or false, got {self.antialias!r}")
        put("flip_prob", _probability("flip_prob", self.flip_prob))

        put("mean", _numbers("mean", self.mean, 3))
        std = _numbers("std", self.std, 3)
        if min(std) <= 0.0:
            raise ConfigError(f"ViewSpec.std must be positive, got {self.std!r}")
        put("std", std)

        _choice("mix", self.mix, MIX_MODES)
        for name in ("mixup_alpha", "cutmix_alpha"):
            alpha = _number(name, getattr(self, name))
            if alpha <= 0.0:
                # Beta(alpha, alpha) is undefined for alpha <= 0.
                raise ConfigError(f"ViewSpec.{name} must be positive, got {getattr(self, name)!r}")
            put(name, alpha)
        put("mix_prob", _probability("mix_prob", self.mix_prob))
        crop_pct = _number("crop_pct", self.crop_pct)
        if not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"ViewSpec.crop_pct must lie in (0, 1], got {self.crop_pct!r}")
        put("crop_pct", crop_pct)
        self._check_format3(put)

    def _check_format3(self, put: Any) -> None:
        _choice("crop", self.crop, CROP_MODES)
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ConfigError(f"ViewSpec.padding must be a non-negative integer, got {self.padding!r}")
        _choice("padding_mode", self.padding_mode, PAD_MODES)
        cr = self.crop_resize
        if isinstance(cr, bool) or not isinstance(cr, int) or (cr != 0 and cr < self.size):
            raise ConfigError(f"ViewSpec.crop_resize must be 0 (the view size) or an integer >= size {self.size}, "
                              f"got {cr!r}")
        if cr and self.crop != "pad":
            raise ConfigError("ViewSpec.crop_resize sets the pad-crop's resize: it needs crop 'pad'")
        if self.crop == "pad" and self.padding_mode in ("reflect", "symmetric") and self.padding >= self.size:
            raise ConfigError(f"ViewSpec.padding {self.padding} is too large for {self.padding_mode} padding of a "
                              f"{self.size}-pixel view: it must be smaller than the view size")
        if not isinstance(self.auto_augment, str):
            raise ConfigError(f"ViewSpec.auto_augment must be a string, got {self.auto_augment!r}")
        parse_auto_augment(self.auto_augment)  # raises ConfigError naming the bad part
        cj = _numbers("color_jitter", self.color_jitter, 4)
        if min(cj) < 0.0 or cj[3] > 0.5:
            raise ConfigError(f"ViewSpec.color_jitter must be non-negative with hue <= 0.5, got {self.color_jitter!r}")
        put("color_jitter", cj)
        if not isinstance(self.three_augment, bool):
            raise ConfigError(f"ViewSpec.three_augment must be true or false, got {self.three_augment!r}")
        put("reprob", _probability("reprob", self.reprob))
        _choice("remode", self.remode, ERASE_MODES)
        if isinstance(self.recount, bool) or not isinstance(self.recount, int) or not 1 <= self.recount <= 16:
            raise ConfigError(f"ViewSpec.recount must be an integer in [1, 16], got {self.recount!r}")
        area = _numbers("re_area", self.re_area, 2)
        if not 0.0 < area[0] <= area[1] <= 1.0:
            raise ConfigError(f"ViewSpec.re_area must satisfy 0 < min <= max <= 1, got {self.re_area!r}")
        put("re_area", area)
        aspect = _numbers("re_aspect", self.re_aspect, 2)
        if not 0.0 < aspect[0] <= aspect[1]:
            raise ConfigError(f"ViewSpec.re_aspect must satisfy 0 < min <= max, got {self.re_aspect!r}")
        put("re_aspect", aspect)

    @property
    def eval_resize(self) -> int:
        """Shorter side of the image before the evaluation view's centre crop."""
        # Rounded first so that e.g. 299 / (299 / 342) gives 342, not 341.99999999999994 -> 341.
        return math.floor(round(self.size / self.crop_pct, 6))

    @property
    def pad_resize(self) -> int:
        """Shorter side of the image a pad-crop pads and crops (``crop_resize``, or the view size)."""
        return self.crop_resize or self.size

    @property
    def is_mixed(self) -> bool:
        """Whether views may blend two samples (then parameters carry a partner, λ and a box)."""
        return self.mix != "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists instead of tuples) that :meth:`from_dict` turns back into an equal spec."""
        d = asdict(self)
        for name in _TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    def replay_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the eval-only settings: what determines a training view (cache identity).

        Format-3 settings at their defaults are left out, so a spec without them has the identity it had
        before they existed (older caches keep their fingerprint and can grow)."""
        defaults = _defaults()
        return {k: v for k, v in self.to_dict().items()
                if k not in EVAL_ONLY_FIELDS and not (k in FORMAT3_FIELDS and v == defaults[k])}

    @property
    def is_strong(self) -> bool:
        """Whether the spec uses any op beyond crop, flip and mixing (cache format 3)."""
        return any(k in FORMAT3_FIELDS for k in self.replay_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewSpec:
        """Rebuild a spec from :meth:`to_dict` output (unknown keys: error; missing keys: defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ViewSpec field(s) {unknown!r}; known fields: {sorted(known)}")
        d = dict(d)
        for name in _TUPLE_FIELDS:
            if name in d and isinstance(d[name], list):
                d[name] = tuple(d[name])
        return cls(**d)


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return ViewSpec().to_dict()
