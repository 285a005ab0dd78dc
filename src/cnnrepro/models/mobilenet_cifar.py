"""MobileNet v1 for 32×32 CIFAR images (seeds 001 and 002, model 002-C).

Compared with ImageNet MobileNet: stem stride 1, the last block's depthwise stride 1, and a 2×2
average pool before the single Linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import LEGACY_BN_INIT, register_model

STEM_CHANNELS = 32
# (output channels, depthwise stride) of the 13 depthwise-separable blocks.
BLOCK_LAYOUT = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *[(512, 1)] * 5,
    (1024, 2),
    (1024, 1),
)


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3×3 depthwise conv → BN → ReLU → 1×1 pointwise conv → BN → ReLU, all convs bias-free."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetCIFAR(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STEM_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
        )
        blocks = []
        channels = STEM_CHANNELS
        for out_channels, stride in BLOCK_LAYOUT:
            blocks.append(depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        # The source uses avg_pool2d(2); at 32×32 input the map is 2×2, so this is identical.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.linear(torch.flatten(x, 1))


@register_model("mobilenet", head="linear", input_size=32, channels=3, options=(LEGACY_BN_INIT,))
def mobilenet_cifar(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> MobileNetCIFAR:
    return MobileNetCIFAR(num_classes, in_channels)
