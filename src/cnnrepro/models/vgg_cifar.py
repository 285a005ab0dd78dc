"""VGG with BatchNorm and a single Linear classifier for 32×32 CIFAR images (seed 002, model 002-E)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import LEGACY_BN_INIT, register_model

# Conv output channels; "M" is a 2×2 max pool.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")  # fmt: skip


class VGGCIFAR(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        layout: tuple = VGG19_LAYOUT,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, input_size
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                side //= 2
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        # The source ends with AvgPool2d(1, 1), a no-op, so it is left out.
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("vgg19", head="classifier", input_size=32, channels=3, options=(LEGACY_BN_INIT,))
def vgg19_cifar(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> VGGCIFAR:
    return VGGCIFAR(num_classes, in_channels, input_size, VGG19_LAYOUT)
