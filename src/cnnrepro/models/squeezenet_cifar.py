"""SqueezeNet and SqueezeNet-DSC for 32×32 CIFAR images (seed 002, models 002-A and 002-B).

Layout as in the authors' code (ags5/DL2017.2): a 3×3 stem conv without BN, Fire modules with BN after every conv, and a
1×1 conv classifier followed by BN and ReLU (so the logits are averages of non-negative maps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import LEGACY_BN_INIT, register_model

# One entry per Fire module: (squeeze, expand1x1, expand3x3). "M" is a 2×2 max pool.
FIRE_LAYOUT = (
    (32, 64, 64),  # fire2: squeeze 32, not ImageNet's 16
    (16, 64, 64),  # fire3
    (32, 128, 128),  # fire4
    (32, 128, 128),  # fire5
    "M",
    (48, 192, 192),  # fire6
    (48, 192, 192),  # fire7
    (64, 256, 256),  # fire8
    "M",
    (64, 256, 256),  # fire9
)
STEM_CHANNELS = 96


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _depthwise_separable_expand(squeeze: int, expand: int, final_relu: bool) -> nn.Sequential:
    # Matches the source exactly: no bias, no BN after the depthwise conv, and (because of a
    # duplicated OrderedDict key) no ReLU after the final BN unless asked for.
    layers: list[nn.Module] = [
        nn.Conv2d(squeeze, squeeze, 3, padding=1, groups=squeeze, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(squeeze, expand, 1, bias=False),
        nn.BatchNorm2d(expand),
    ]
    if final_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Fire(nn.Module):
    """Squeeze 1×1, then expand 1×1 ‖ expand 3×3, concatenated on channels."""

    def __init__(
        self,
        in_channels: int,
        squeeze: int,
        expand1x1: int,
        expand3x3: int,
        depthwise_separable: bool = False,
        dsc_final_relu: bool = False,
    ) -> None:
        super().__init__()
        self.squeeze = _conv_bn_relu(in_channels, squeeze, 1)
        self.expand1x1 = _conv_bn_relu(squeeze, expand1x1, 1)
        if depthwise_separable:
            self.expand3x3 = _depthwise_separable_expand(squeeze, expand3x3, dsc_final_relu)
        else:
            self.expand3x3 = _conv_bn_relu(squeeze, expand3x3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class SqueezeNetCIFAR(nn.Module):
    """SqueezeNet (002-A) or, with ``depthwise_separable=True``, SqueezeNet-DSC (002-B)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        depthwise_separable: bool = False,
        dsc_final_relu: bool = False,
    ) -> None:
        super().__init__()
        if dsc_final_relu and not depthwise_separable:
            raise ValueError("dsc_final_relu only applies to SqueezeNet-DSC (depthwise_separable=True)")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, STEM_CHANNELS, 3, padding=1),  # no BN on the stem
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),
        ]
        channels = STEM_CHANNELS
        for item in FIRE_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers.append(Fire(channels, *item, depthwise_separable, dsc_final_relu))
                channels = item[1] + item[2]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, num_classes, 1),
            nn.BatchNorm2d(num_classes),  # BatchNorm3d on a 4-D tensor in the source; same thing then
            nn.ReLU(inplace=True),
        )
        # The source uses AvgPool2d(4); at 32×32 input the map is 4×4, so this is identical.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._init_weights()

    def _init_weights(self) -> None:
        final_conv = self.classifier[0]
        for module in self.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            if module is final_conv:
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
            else:
                # The source's fan_in counts all input channels, even for the depthwise conv.
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                bound = math.sqrt(6.0 / fan_in)
                nn.init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.features(x))
        return torch.flatten(self.pool(x), 1)


@register_model("squeezenet", head="classifier", input_size=32, channels=3, options=(LEGACY_BN_INIT,))
def squeezenet_cifar(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> SqueezeNetCIFAR:
    return SqueezeNetCIFAR(num_classes, in_channels)


@register_model("squeezenet_dsc", head="classifier", input_size=32, channels=3,
                options=(LEGACY_BN_INIT, "dsc_final_relu"))
def squeezenet_dsc_cifar(
    num_classes: int = 10, in_channels: int = 3, input_size: int = 32, dsc_final_relu: bool = False
) -> SqueezeNetCIFAR:
    return SqueezeNetCIFAR(num_classes, in_channels, depthwise_separable=True, dsc_final_relu=dsc_final_relu)
