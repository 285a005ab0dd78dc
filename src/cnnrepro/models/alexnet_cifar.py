"""AlexNet adapted to 32×32 CIFAR images (seed 002, model 002-D).

3×3 convs without BN, ceil-mode 3×3/2 pools (needed for the 256·4·4 FC input) and BatchNorm1d
in place of dropout in the two hidden FC layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import LEGACY_BN_INIT, register_model

HIDDEN = 4096


def _ceil_pool_size(side: int) -> int:
    """Output side of MaxPool2d(3, 2, ceil_mode=True) without padding."""
    return math.ceil((side - 3) / 2) + 1


class AlexNetCIFAR(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(64, 192, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        side = input_size
        for _ in range(3):
            side = _ceil_pool_size(side)
        self.classifier = nn.Sequential(
            nn.Linear(256 * side * side, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("alexnet", head="classifier.6", input_size=32, channels=3, options=(LEGACY_BN_INIT,))
def alexnet_cifar(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> AlexNetCIFAR:
    return AlexNetCIFAR(num_classes, in_channels, input_size)
