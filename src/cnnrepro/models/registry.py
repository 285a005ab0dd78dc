"""One registration per model (timm-style): each architecture file decorates its builders.

A registration says everything the rest of the package needs about a model: how to build it, its
native input size and channels, where its head is, its ImageNet weights (if any), the
chain of stages that frozen-prefix caching cuts, and the options its builder accepts. The config
schema's list of model names is derived from here, so adding a model is one file plus one
``@register_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn


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
