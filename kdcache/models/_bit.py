"""BiT: ResNet-V2 with GroupNorm and weight-standardised convolutions (Kolesnikov et al. 2020).

Big Transfer replaces BatchNorm by GroupNorm + Weight Standardisation so that the network
transfers well with tiny per-device batches, and uses pre-activation bottlenecks (He et al.
2016b). Module names (``root.conv``, ``body.block{1..4}.unit{NN}.{gn1,conv1,...,downsample}``,
``head.{gn,conv}``) follow google-research/big_transfer's PyTorch code, so weights converted for
that code load here unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import set_model_cfg
from kdcache.models._registry import register_model

__all__ = ["StdConv2d", "PreActBottleneck", "ResNetV2", "bit_resnet50x1", "bit_resnet101x1",
           "bit_resnet50x3", "bit_resnet_test"]

_BIT_MEAN = (0.5, 0.5, 0.5)
_BIT_STD = (0.5, 0.5, 0.5)


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised (zero mean, unit variance per output filter) at every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=1, stride=stride, padding=0, bias=False)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: GN-ReLU-conv1x1, GN-ReLU-conv3x3 (strided), GN-ReLU-conv1x1.

    The projection shortcut, when needed, reads the *pre-activated* input, as in ResNet-V2.
    """

    def __init__(self, *, cin: int, cout: int, cmid: int, stride: int = 1, gn_groups: int = 32) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(gn_groups, cin)
        self.conv1 = _conv1x1(cin, cmid)
        self.gn2 = nn.GroupNorm(gn_groups, cmid)
        self.conv2 = _conv3x3(cmid, cmid, stride)
        self.gn3 = nn.GroupNorm(gn_groups, cmid)
        self.conv3 = _conv1x1(cmid, cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.gn1(x))
        residual = self.downsample(out) if self.downsample is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.gn2(out)))
        out = self.conv3(self.relu(self.gn3(out)))
        return out + residual


class ResNetV2(nn.Module):
    """BiT ResNet-V2: stem, four stages of pre-activation bottlenecks, GN-ReLU-pool-1×1-conv head."""

    def __init__(self, *, num_classes: int, layers: Sequence[int], width_factor: int = 1,
                 stem_width: int = 64, base_width: int = 64, gn_groups: int = 32,
                 zero_head: bool = False) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ModelError(f"layers must be four positive block counts, got {tuple(layers)!r}")
        if width_factor < 1:
            raise ModelError(f"width_factor must be a positive integer, got {width_factor!r}")
        wf = int(width_factor)
        stem = stem_width * wf
        mids = [base_width * wf * 2**i for i in range(4)]
        for c in (stem, *mids):
            if c % gn_groups:
                raise ModelError(f"GroupNorm({gn_groups}) needs channel counts divisible by {gn_groups}, got {c}")
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)),
            ("pad", nn.ConstantPad2d(1, 0.0)),
            ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=0)),
        ]))
        blocks = []
        cin = stem
        for i, (n, cmid) in enumerate(zip(layers, mids)):
            cout = 4 * cmid
            units = []
            for j in range(int(n)):
                stride = 2 if (i > 0 and j == 0) else 1
                units.append((f"unit{j + 1:02d}", PreActBottleneck(cin=cin, cout=cout, cmid=cmid, stride=stride,
                                                                   gn_groups=gn_groups)))
                cin = cout
            blocks.append((f"block{i + 1}", nn.Sequential(OrderedDict(units))))
        self.body = nn.Sequential(OrderedDict(blocks))
        self.num_features = cin
        self.head = nn.Sequential(OrderedDict([
            ("gn", nn.GroupNorm(gn_groups, cin)),
            ("relu", nn.ReLU(inplace=True)),
            ("avg", nn.AdaptiveAvgPool2d(1)),
            ("conv", nn.Conv2d(cin, num_classes, kernel_size=1, bias=True)),
        ]))
        if zero_head:
            # BiT's fine-tuning recipe starts from a zero head so the pretrained features are not disturbed.
            nn.init.zeros_(self.head.conv.weight)
            nn.init.zeros_(self.head.conv.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final pre-activated feature map: body output after the head's GroupNorm and ReLU."""
        x = self.body(self.root(x))
        return self.head.relu(self.head.gn(x))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = self.head.avg(x)
        if pre_logits:
            return torch.flatten(x, 1)
        return torch.flatten(self.head.conv(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _bit(num_classes: int, layers: Sequence[int], width_factor: int, input_size: int, **kw) -> ResNetV2:
    model = ResNetV2(num_classes=num_classes, layers=layers, width_factor=width_factor, **kw)
    return set_model_cfg(model, input_size=input_size, mean=_BIT_MEAN, std=_BIT_STD)


@register_model(tags=("teacher",))
def bit_resnet50x1(*, num_classes: int, zero_head: bool = False) -> ResNetV2:
    """BiT ResNet-50x1 (ResNet-V2, GroupNorm + weight standardisation)."""
    return _bit(num_classes, (3, 4, 6, 3), 1, 224, zero_head=zero_head)


@register_model(tags=("teacher",))
def bit_resnet101x1(*, num_classes: int, zero_head: bool = False) -> ResNetV2:
    """BiT ResNet-101x1 (ResNet-V2, GroupNorm + weight standardisation)."""
    return _bit(num_classes, (3, 4, 23, 3), 1, 224, zero_head=zero_head)


@register_model(tags=("teacher",))
def bit_resnet50x3(*, num_classes: int, zero_head: bool = False) -> ResNetV2:
    """BiT ResNet-50x3: three times wider ResNet-V2-50 (GroupNorm + weight standardisation)."""
    return _bit(num_classes, (3, 4, 6, 3), 3, 224, zero_head=zero_head)


@register_model(tags=("teacher",))
def bit_resnet_test(*, num_classes: int, zero_head: bool = False) -> ResNetV2:
    """Tiny BiT ResNet-V2 (one unit per stage, few channels) for fast tests."""
    return _bit(num_classes, (1, 1, 1, 1), 1, 64, stem_width=16, base_width=8, gn_groups=8,
                zero_head=zero_head)
