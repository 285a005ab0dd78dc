"""One registration per model (timm-style): each architecture file decorates its builders.

A registration says everything the rest of the package needs about a model: how to build it, its
native input size and channels, where its head is, its ImageNet weights (if any), the
chain of stages that frozen-prefix caching cuts, and the options its builder accepts. The config
schema's list of model names is derived from here, so adding a model is one file plus one
``@register_model``.
"""

from __future__ import annotations

import re
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
# Ways to register a name when it is first asked for (the torchvision zoo: cnnrepro.models.zoo).
_RESOLVERS: list[Callable[[str], bool]] = []
# A model's name is a folder of its runs (config.RUN_PATTERN): lower-case letters, digits and underscores, with the
# zoo's "torchvision." in front.
NAME_PATTERN = re.compile(r"^(torchvision\.)?[a-z0-9_]+$")


class ModelNameTaken(ValueError):
    """A registration under a name another registration already has."""

    def __init__(self, name: str, owner: str):
        super().__init__(f"model {name!r} is already registered (by {owner})")
        self.name, self.owner = name, owner


def register_model(name: str, *, head: str, input_size: int, channels: int, pretrained_weights: str | None = None,
                   feature_split: FeatureSplit | None = None, options: Sequence[str] = ()):
    """Decorator: register ``builder`` under ``name``. A name can be registered once.

    ``builder(num_classes, in_channels, input_size, **options)`` returns the network; ``head`` is the dotted name of
    its classifier (what the freeze level ``head`` trains), ``input_size`` and ``channels`` its native input.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ModelNameTaken(name, _REGISTRY[name].builder.__module__)
        if not NAME_PATTERN.match(name):
            raise ValueError(f"model name {name!r} cannot name a folder of runs: use lower-case letters, digits and "
                             "underscores (e.g. my_net)")
        _REGISTRY[name] = ModelSpec(name, builder, head, input_size, channels, pretrained_weights, feature_split,
                                    tuple(options))
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Remove a registration (tests that register a toy model clean up with this)."""
    _REGISTRY.pop(name, None)


def add_resolver(resolver: Callable[[str], bool]) -> None:
    """``resolver(name)`` registers ``name`` and says True, or says False: get_spec asks it for a name not
    registered yet."""
    _RESOLVERS.append(resolver)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def model_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY and not any(resolve(name) for resolve in _RESOLVERS):
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
