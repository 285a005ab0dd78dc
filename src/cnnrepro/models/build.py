"""Building a registered model for a run: its head sized for the study's classes, ImageNet weights read offline,
the freeze level applied, and the same build on the ``meta`` device (shapes only, no memory or weights) that the
start-up checks and the compute plan count on."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .meta import on_meta
from .pretrained import load_weights
from .registry import LEGACY_BN_INIT, get_spec


def build_model(
    name: str,
    num_classes: int,
    in_channels: int | None = None,
    input_size: int | None = None,
    pretrained: bool = False,
    weights_dir: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model ``name`` with a ``num_classes`` head.

    ``in_channels`` and ``input_size`` default to the registration's native values (``input_size`` only
    sizes the FC layers of the from-scratch models). With ``pretrained=True`` the ImageNet weights are
    read from ``weights_dir`` (never downloaded) before the head is replaced.
    """
    spec = get_spec(name)
    opts = dict(options or {})
    for key in opts:
        if key not in spec.options:
            accepted = ", ".join(spec.options) or "none"
            raise ValueError(f"unknown option {key!r} for model {name!r}; accepted options: {accepted}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    legacy_bn_init = bool(opts.pop(LEGACY_BN_INIT, False))
    in_channels = spec.channels if in_channels is None else in_channels
    size = spec.input_size if input_size is None else input_size

    if spec.pretrained_weights is not None:
        if in_channels != spec.channels:
            raise ValueError(f"{name!r} takes {spec.channels}-channel input; convert the images in the data path "
                             "(input.rgb: true)")
        if pretrained and weights_dir is None:
            raise ValueError(f"pretrained=True for {name!r} needs weights_dir (weights are loaded offline)")
        state = load_weights(name, weights_dir, opts) if pretrained else None
        model = spec.builder(num_classes, in_channels, size, imagenet_state=state, **opts)
    else:
        if pretrained:
            raise ValueError(f"model {name!r} has no pretrained weights; it is trained from scratch")
        model = spec.builder(num_classes, in_channels, size, **opts)

    if legacy_bn_init:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                nn.init.uniform_(module.weight, 0.0, 1.0)
    return model


def build_on_meta(name: str, num_classes: int, in_channels: int | None = None, input_size: int | None = None,
                  options: dict[str, Any] | None = None) -> nn.Module:
    """``name`` built as :func:`build_model` builds it (never pretrained) on the ``meta`` device: every module and
    shape, no memory, milliseconds even for VGG19 (cnnrepro.models.meta; a builder that reads tensor values while it
    builds gets its parameters moved there as they are registered)."""
    return on_meta(lambda: build_model(name, num_classes, in_channels=in_channels, input_size=input_size,
                                       options=options))


def blank_batch(model: nn.Module, n: int, channels: int, size: int) -> torch.Tensor:
    """``n`` images of ``size`` px, uninitialised, on the device the model's parameters are on (the meta device
    for a :func:`build_on_meta` model): what a shape-only forward pass takes."""
    device = next(model.parameters(), torch.empty(0, device="meta")).device
    return torch.empty(n, channels, size, size, device=device)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Sum of numel over parameters (never buffers); only requires_grad ones if ``trainable_only``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def apply_freeze(model: nn.Module, name: str, trainable: str | Sequence[str]) -> None:
    """Make only the listed modules trainable.

    ``trainable`` is "all" or a list of dotted module prefixes; "head" stands for the spec's head.
    Parameters outside every listed module get requires_grad=False.
    """
    if isinstance(trainable, str):
        if trainable != "all":
            raise ValueError(f'trainable must be "all" or a list of module prefixes, got {trainable!r}')
        for param in model.parameters():
            param.requires_grad_(True)
        return

    head = get_spec(name).head
    prefixes = [head if prefix == "head" else prefix for prefix in trainable]
    module_names = {module_name for module_name, _ in model.named_modules()}
    for prefix in prefixes:
        if not prefix or prefix not in module_names:
            children = ", ".join(child for child, _ in model.named_children())
            raise ValueError(
                f"freeze prefix {prefix!r} matches no module of {name!r}; top-level modules: {children}"
            )
    for param_name, param in model.named_parameters():
        param.requires_grad_(any(param_name.startswith(prefix + ".") for prefix in prefixes))


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """Call after every ``model.train()``. With mode "eval", BatchNorm layers whose parameters are
    all frozen stop updating their running statistics (seed 000 flag --bn-eval); "train" leaves
    them as they are."""
    if mode not in ("train", "eval"):
        raise ValueError(f'BN mode must be "train" or "eval", got {mode!r}')
    if mode == "train":
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()
