"""What a run's settings build: its model (freeze level applied), optimizer, loss and speed switches."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnrepro import models

# The class of each optimizer a recipe can name. Which recipe keys each one takes, and their defaults, are in
# the config schema's per-optimizer branches (cnnrepro.config.recipe_branches).
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop,
              "adadelta": torch.optim.Adadelta}


def build_run_model(settings: dict, pretrained: bool | None = None, weights_dir: str | Path | None = None) -> nn.Module:
    """The run's model with its freeze level applied (``pretrained`` overrides the settings)."""
    model = models.build_model(settings["model"], settings["num_classes"], in_channels=settings["in_channels"],
                               input_size=settings["input"]["size"],
                               pretrained=settings["pretrained"] if pretrained is None else pretrained,
                               weights_dir=weights_dir)
    models.apply_freeze(model, settings["model"], settings["trainable"])
    return model


def make_optimizer(params, recipe: dict) -> torch.optim.Optimizer:
    from cnnrepro.config import recipe_branches

    name = recipe["optimizer"]
    options = {key: tuple(recipe[key]) if key == "betas" else recipe[key]
               for key in sorted(recipe_branches()["optimizer"][name])}
    return OPTIMIZERS[name](params, lr=recipe["lr"], **options)


def make_loss(name: str, num_classes: int):
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y)
    if name == "mse":
        # Keras 'mean_squared_error' between the softmax output and the one-hot target (seed 004).
        return lambda logits, y: F.mse_loss(logits.softmax(1), F.one_hot(y, num_classes).to(logits.dtype))
    raise ValueError(f"unknown loss '{name}'; valid: ce, mse")


def effective_speed(recipe: dict, device_type: str, has_conv: bool, bf16_supported: bool = True) -> dict:
    """The speed switches a run actually uses, from the recipe's requests and the device.

    Kept free of device queries so the CUDA decisions can be tested on a CPU-only machine.
    bf16 autocast and cudnn.benchmark exist only on CUDA, so on CPU the numbers do not change.
    """
    requested = {key: bool(recipe[key]) for key in ("channels_last", "amp_bf16", "cudnn_benchmark", "compile")}
    cuda = device_type == "cuda"
    return {
        "channels_last": requested["channels_last"] and has_conv,
        "amp_bf16": requested["amp_bf16"] and cuda and bf16_supported,
        "cudnn_benchmark": requested["cudnn_benchmark"] and cuda,
        "compile": requested["compile"],
        "requested": requested,
    }


def autocast(device: torch.device, enabled: bool):
    # enabled=False is a true no-op, so the CPU path runs exactly as without the switch.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def to_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
