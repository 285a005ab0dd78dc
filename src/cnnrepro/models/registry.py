"""One place that knows every model by name: how to build it, where its head is, how to freeze it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .alexnet_cifar import AlexNetCIFAR
from .kmnist import FCNN, KMNISTCNN
from .mobilenet_cifar import MobileNetCIFAR
from .pretrained import HEADS, PRETRAINED_WEIGHTS, build_torchvision
from .resnet_cifar import resnet18_cifar
from .squeezenet_cifar import squeezenet_cifar, squeezenet_dsc_cifar
from .vgg_cifar import vgg19_cifar


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    head: str  # dotted module path of the classifier a fresh model trains / a pretrained one replaces
    pretrained_weights: str | None  # torchvision weight enum member, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    expects_rgb: bool
    native_input_size: int | None
    options: tuple[str, ...] = ()  # keys accepted by build_model(options=...)


# PyTorch ≤0.3 (what seed 002 ran on) initialised BN γ ~ U(0, 1) instead of 1; conv and linear
# default inits are unchanged since then, so this flag is the only difference.
_LEGACY_BN = ("legacy_bn_init",)


def _tv(name: str, family: str) -> ModelSpec:
    return ModelSpec(name, family, HEADS[name], PRETRAINED_WEIGHTS[name], True, 224)


_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("squeezenet", "squeezenet_cifar", "classifier", None, True, 32, _LEGACY_BN),
        ModelSpec("squeezenet_dsc", "squeezenet_cifar", "classifier", None, True, 32,
                  _LEGACY_BN + ("dsc_final_relu",)),
        ModelSpec("mobilenet", "mobilenet_cifar", "linear", None, True, 32, _LEGACY_BN),
        ModelSpec("alexnet", "alexnet_cifar", "classifier.6", None, True, 32, _LEGACY_BN),
        ModelSpec("vgg19", "vgg_cifar", "classifier", None, True, 32, _LEGACY_BN),
        ModelSpec("resnet18_cifar", "resnet_cifar", "linear", None, True, 32),
        ModelSpec("cnn", "kmnist", "classifier.3", None, False, 28),
        ModelSpec("cnn_nopool", "kmnist", "classifier.3", None, False, 28),
        ModelSpec("fcnn", "kmnist", "classifier.6", None, False, 28),
        _tv("resnet18", "torchvision_resnet"),
        _tv("resnet34", "torchvision_resnet"),
        _tv("resnet50", "torchvision_resnet"),
        _tv("squeezenet1_1", "torchvision_squeezenet"),
    )
}  # fmt: skip
MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)

# From-scratch builders: (num_classes, in_channels, input_size, **options) -> model.
_SCRATCH_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "squeezenet": lambda c, ch, size: squeezenet_cifar(c, ch),
    "squeezenet_dsc": lambda c, ch, size, dsc_final_relu=False: squeezenet_dsc_cifar(c, ch, dsc_final_relu),
    "mobilenet": lambda c, ch, size: MobileNetCIFAR(c, ch),
    "alexnet": lambda c, ch, size: AlexNetCIFAR(c, ch, size),
    "vgg19": lambda c, ch, size: vgg19_cifar(c, ch, size),
    "resnet18_cifar": lambda c, ch, size: resnet18_cifar(c, ch),
    "cnn": lambda c, ch, size: KMNISTCNN(c, ch, size, pooling=True),
    "cnn_nopool": lambda c, ch, size: KMNISTCNN(c, ch, size, pooling=False),
    "fcnn": lambda c, ch, size: FCNN(c, ch, size),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_size: int | None = None,
    pretrained: bool = False,
    weights_dir: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model ``name`` with a ``num_classes`` head.

    ``input_size`` (default: the spec's native size) only sizes the FC layers of the from-scratch
    models. With ``pretrained=True`` the ImageNet weights are read from ``weights_dir`` (never
    downloaded) before the head is replaced.
    """
    spec = get_spec(name)
    opts = dict(options or {})
    for key in opts:
        if key not in spec.options:
            accepted = ", ".join(spec.options) or "none"
            raise ValueError(f"unknown option {key!r} for model {name!r}; accepted options: {accepted}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    legacy_bn_init = bool(opts.pop("legacy_bn_init", False))

    if spec.pretrained_weights is not None:
        if in_channels != 3:
            raise ValueError(f"{name!r} takes 3-channel input; convert grey images to RGB in the data path")
        model = build_torchvision(name, num_classes, pretrained, weights_dir)
    else:
        if pretrained:
            raise ValueError(f"model {name!r} has no pretrained weights; it is trained from scratch")
        size = input_size if input_size is not None else spec.native_input_size
        model = _SCRATCH_BUILDERS[name](num_classes, in_channels, size, **opts)

    if legacy_bn_init:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                nn.init.uniform_(module.weight, 0.0, 1.0)
    return model


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
