"""CIFAR ResNets (He et al. 2016, section 4.2) with "option A" shortcuts.

Depth ``6n + 2``: a 3×3 stem with 16 channels, three stages of ``n`` basic blocks with 16/32/64
channels (stride 2 at the first block of stages 2 and 3), global average pooling, a linear layer.
The downsampling shortcut has no parameters: it takes every second pixel and zero-pads the new
channels, half on each side. Module names follow akamaster/pytorch_resnet_cifar10, so its public
checkpoints (``/work/shared/weights``) load as they are once ``module.`` is stripped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import IMAGENET_MEAN, IMAGENET_STD, set_model_cfg
from kdcache.models._registry import register_model

__all__ = ["CifarResNet", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
           "cifar_resnet110"]


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: stride-2 subsampling plus symmetric zero channel padding."""

    def __init__(self, *, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_channels
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))


class BasicBlock(nn.Module):
    def __init__(self, *, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            # Option A assumes the channel count doubles exactly when the resolution halves.
            if stride != 2 or planes != 2 * in_planes:
                raise ModelError(f"option-A shortcut needs stride 2 and doubled channels, got "
                                 f"{in_planes}->{planes} at stride {stride}")
            self.shortcut: nn.Module = _ShortcutA(pad_channels=planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs."""

    def __init__(self, *, depth: int, num_classes: int, base_width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        widths = (base_width, 2 * base_width, 4 * base_width)
        in_planes = base_width
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes=in_planes, planes=planes, stride=stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = in_planes
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cifar_resnet(depth: int, num_classes: int, base_width: int) -> CifarResNet:
    model = CifarResNet(depth=depth, num_classes=num_classes, base_width=base_width)
    # The public checkpoints were trained on [0, 1] inputs normalised with ImageNet statistics.
    return set_model_cfg(model, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model(tags=("teacher", "student"))
def cifar_resnet20(*, num_classes: int, base_width: int = 16) -> CifarResNet:
    """CIFAR ResNet-20 (0.27 M params), option-A shortcuts."""
    return _cifar_resnet(20, num_classes, base_width)


@register_model(tags=("teacher", "student"))
def cifar_resnet32(*, num_classes: int, base_width: int = 16) -> CifarResNet:
    """CIFAR ResNet-32 (0.46 M params), option-A shortcuts."""
    return _cifar_resnet(32, num_classes, base_width)


@register_model(tags=("teacher", "student"))
def cifar_resnet44(*, num_classes: int, base_width: int = 16) -> CifarResNet:
    """CIFAR ResNet-44 (0.66 M params), option-A shortcuts."""
    return _cifar_resnet(44, num_classes, base_width)


@register_model(tags=("teacher", "student"))
def cifar_resnet56(*, num_classes: int, base_width: int = 16) -> CifarResNet:
    """CIFAR ResNet-56 (0.85 M params), option-A shortcuts."""
    return _cifar_resnet(56, num_classes, base_width)


@register_model(tags=("teacher", "student"))
def cifar_resnet110(*, num_classes: int, base_width: int = 16) -> CifarResNet:
    """CIFAR ResNet-110 (1.7 M params), option-A shortcuts."""
    return _cifar_resnet(110, num_classes, base_width)
