"""Small plain CNNs: the offline quickstart's teacher/student and a deliberately weak student.

``cnn_small`` is a VGG-style stack of conv-BN-ReLU stages (two convolutions per stage, max-pool
between stages, global average pool, linear head). At 32 px with ``width=16`` it costs about
20 MFLOPs per image, so a few epochs on the digits dataset run in seconds on two CPU cores and
still reach high accuracy. ``cnn_tiny`` has one narrow convolution per stage: it is meant to
*need* a teacher, which makes distillation gains visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import set_model_cfg
from kdcache.models._registry import register_model

__all__ = ["SimpleCNN", "cnn_small", "cnn_tiny"]

_CNN_MEAN = (0.5, 0.5, 0.5)
_CNN_STD = (0.5, 0.5, 0.5)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SimpleCNN(nn.Module):
    """Stages of ``convs_per_stage`` conv-BN-ReLU blocks; 2×2 max-pool between stages."""

    def __init__(self, *, num_classes: int, widths: Sequence[int], convs_per_stage: int = 2,
                 dropout: float = 0.0, in_chans: int = 3) -> None:
        super().__init__()
        if not widths or any(int(w) < 1 for w in widths):
            raise ModelError(f"widths must be a non-empty sequence of positive integers, got {widths!r}")
        if convs_per_stage < 1:
            raise ModelError(f"convs_per_stage must be >= 1, got {convs_per_stage!r}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {dropout!r}")
        stages: list[nn.Module] = []
        cin = in_chans
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(convs_per_stage):
                layers.append(_conv_bn_relu(cin, int(w)))
                cin = int(w)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, (B, num_features, H/2^(stages-1), W/2^(stages-1))."""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(tags=("student", "teacher"))
def cnn_small(*, num_classes: int, width: int = 16, dropout: float = 0.1) -> SimpleCNN:
    """Small fast CNN (3 stages of 2 conv-BN-ReLU, widths w/2w/4w) for 32 px quickstarts."""
    if width < 1:
        raise ModelError(f"width must be a positive integer, got {width!r}")
    model = SimpleCNN(num_classes=num_classes, widths=(width, 2 * width, 4 * width), convs_per_stage=2,
                      dropout=dropout)
    return set_model_cfg(model, input_size=32, mean=_CNN_MEAN, std=_CNN_STD)


@register_model(tags=("student", "teacher"))
def cnn_tiny(*, num_classes: int, width: int = 8) -> SimpleCNN:
    """Tiny CNN (3 stages of 1 narrow conv-BN-ReLU): a weak student that benefits from a teacher."""
    if width < 1:
        raise ModelError(f"width must be a positive integer, got {width!r}")
    model = SimpleCNN(num_classes=num_classes, widths=(width, 2 * width, 4 * width), convs_per_stage=1)
    return set_model_cfg(model, input_size=32, mean=_CNN_MEAN, std=_CNN_STD)
