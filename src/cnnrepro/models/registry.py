"""One registration per model (timm-style): each architecture file decorates its builders.

A registration says everything the rest of the package needs about a model: how to build it, its
native input size and channels, where its head is, its ImageNet weights (if any), the
chain of stages that frozen-prefix caching cuts, and the options its builder accepts. The config
schema's list of model names is derived from here, so adding a model is one file plus one
``@register_model``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class FeatureSplit:
    """The model as a chain of stages, what feature caching cuts into a frozen prefix (computed once) and the
    suffix that trains: ``stages(model)`` lists (name, module) pairs in order, and applying the modules one after
    the other is ``model(x)`` exactly. A stage's name is its dotted module name in the model ("features.11"), or
    a label for a parameter-free step that is not a module of the model ("flatten")."""

    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # (num_classes, in_channels, input_size, **options) -> model; a pretrained model's builder also takes
    # ``imagenet_state``: the 1000-class ImageNet state dict to load before the head is replaced, or None.
    builder: Callable[..., nn.Module]
    head: str  # dotted module path of the classifier a fresh model trains / a pretrained one replaces
    input_size: int  # native input side in pixels
    channels: int  # native input channels
    pretrained_weights: str | None = None  # torchvision weight enum member, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    feature_split: FeatureSplit | None = None
    options: tuple[str, ...] = ()  # keys accepted by build_model(options=...)


# An option build_model handles for any model that lists it: PyTorch ≤0.3's BatchNorm init (γ ~ U(0, 1)
# instead of 1), which seed 002 ran on; conv and linear default inits are unchanged since then.
LEGACY_BN_INIT = "legacy_bn_init"

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, head: str, input_size: int, channels: int, pretrained_weights: str | None = None,
                   feature_split: FeatureSplit | None = None, options: Sequence[str] = ()):
    """Decorator: register ``builder`` under ``name``. A name can be registered once."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = ModelSpec(name, builder, head, input_size, channels, pretrained_weights, feature_split,
                                    tuple(options))
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Remove a registration (tests that register a toy model clean up with this)."""
    _REGISTRY.pop(name, None)


def model_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}") from None


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
        from .pretrained import load_weights

        if pretrained and weights_dir is None:
            raise ValueError(f"pretrained=True for {name!r} needs weights_dir (weights are loaded offline)")
        state = load_weights(name, weights_dir) if pretrained else None
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
