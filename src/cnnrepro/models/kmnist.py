"""Kuzushiji-MNIST models of seed 003, ported from Keras: CNN, CNN without pooling, and FCNN.

Keras defaults are kept: 'valid' padding, glorot-uniform kernels and zero biases. The models
return logits; the softmax of the Keras originals lives in the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _keras_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            # PyTorch's fan computation for conv kernels equals Keras's (k·k·channels).
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


class KMNISTCNN(nn.Module):
    """Keras mnist_cnn: two 3×3 convs, optional 2×2 max pool, dropout, Dense 128, Dense C."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, pooling: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
        ]
        side = input_size - 4  # two valid 3×3 convs
        if pooling:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        layers.append(nn.Dropout(0.25))  # kept even without pooling, as in the source
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Keras flattens NHWC; the order does not matter when training from scratch.
        return self.classifier(torch.flatten(self.features(x), 1))


class FCNN(nn.Module):
    """Flatten → Dense 1024 → Dropout 0.25 → Dense 512 → Dropout 0.5 → Dense C."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * input_size * input_size, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Linear(1024, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))


@register_model("cnn", head="classifier.3", input_size=28, channels=1)
def cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> KMNISTCNN:
    return KMNISTCNN(num_classes, in_channels, input_size, pooling=True)


@register_model("cnn_nopool", head="classifier.3", input_size=28, channels=1)
def cnn_nopool(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> KMNISTCNN:
    return KMNISTCNN(num_classes, in_channels, input_size, pooling=False)


@register_model("fcnn", head="classifier.6", input_size=28, channels=1)
def fcnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> FCNN:
    return FCNN(num_classes, in_channels, input_size)
