"""torchvision's classification model zoo by name: a study lists ``torchvision.<builder>`` (``torchvision.densenet121``,
``torchvision.vit_b_16``, any name of ``torchvision.models.list_models(module=torchvision.models)``) and it is
registered here on first use, with what the registry holds for a built-in model derived from torchvision itself:

- the head: the last module that produces the logits, found by building the model on the meta device for an odd
  number of classes and looking for the layer with that many outputs (``fc``, ``classifier.1``, ``heads.head``, ...);
- the native input size and normalisation: the default weights' own transforms (a study overrides them in
  ``input:``; ``input.size: model`` and ``input.normalization: model`` ask for them);
- the weights: the enum's default member, or the one a study names (``model_options: {<name>: {weights: M}}``),
  read offline from ``weights_dir`` like the built-in models' (cnnrepro.models.pretrained).

The model is torchvision's builder called with ``num_classes`` (torchvision's own head and initialisation for the
study's classes); with weights, every other parameter is loaded from the 1000-class ImageNet state dict.
"""

from __future__ import annotations

import difflib
import functools
import re
import warnings

from torch import nn

from .meta import on_meta
from .registry import add_resolver, get_spec, is_registered, register_model

ZOO_PREFIX = "torchvision."
# Families whose builder fixes the image size at build time (a ViT's position embedding, MaxViT's window
# partition): the run's input side is passed as this keyword, as a side or as (height, width).
SIZE_KEYWORDS = {"vit_": ("image_size", lambda side: side), "maxvit_": ("input_size", lambda side: (side, side))}
# Training reads the main logits only: the auxiliary classifiers of GoogLeNet and Inception v3 are left out (their
# weights are dropped on loading), so the model returns plain logits in train mode too.
BUILD_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
                "inception_v3": {"aux_logits": False, "init_weights": True}}
# What torchvision's builder sets when it loads these weights: the Google weights expect their own input scaling.
PRETRAINED_KWARGS = {"googlenet": {"transform_input": True}, "inception_v3": {"transform_input": True}}
AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
# An odd class count no inner layer of any zoo model has: the layer giving this many outputs is the head.
HEAD_PROBE_CLASSES = 1013
WEIGHTS_OPTION = "weights"
# torchvision's DenseNet checkpoints name some keys 'norm.1' where the modules are now 'norm1' (its own loader,
# torchvision.models.densenet._load_state_dict, renames them the same way).
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                           r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


class UnknownZooModel(KeyError):
    """A ``torchvision.`` name that is not one of torchvision's classification builders."""

    def __str__(self) -> str:
        return str(self.args[0])


def _tvm():
    import torchvision.models as tvm  # deferred: torchvision takes ~2 s to import; only zoo models need it

    return tvm


@functools.lru_cache(maxsize=1)
def builder_names() -> tuple[str, ...]:
    """Every classification builder torchvision ships (detection, segmentation, video and quantized ones are in
    submodules and left out)."""
    return tuple(_tvm().list_models(module=_tvm()))


def is_zoo_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(ZOO_PREFIX)


def closest(name: str, n: int = 3) -> list[str]:
    """The zoo names nearest to ``name`` (for a misspelt one)."""
    builder = name.removeprefix(ZOO_PREFIX)
    return [ZOO_PREFIX + b for b in difflib.get_close_matches(builder, builder_names(), n=n, cutoff=0.5)]


def _size_keyword(builder: str):
    return next((keyword for prefix, keyword in SIZE_KEYWORDS.items() if builder.startswith(prefix)), None)


def _build(builder: str, num_classes: int, input_size: int | None, pretrained: bool) -> nn.Module:
    kwargs = {**BUILD_KWARGS.get(builder, {}), **(PRETRAINED_KWARGS.get(builder, {}) if pretrained else {})}
    size_keyword = _size_keyword(builder)
    if size_keyword and input_size:
        keyword, value = size_keyword
        kwargs[keyword] = value(input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's notes on its initialisation defaults
        return _tvm().get_model(builder, weights=None, num_classes=num_classes, **kwargs)


def find_head(model: nn.Module, num_classes: int) -> str:
    """The dotted name of the last layer with ``num_classes`` outputs: the classifier that gives the logits."""
    heads = [name for name, module in model.named_modules()
             if (isinstance(module, nn.Linear) and module.out_features == num_classes)
             or (isinstance(module, nn.Conv2d) and module.out_channels == num_classes)]
    if not heads:
        raise ValueError(f"no layer of {type(model).__name__} gives {num_classes} outputs: cannot tell its head")
    return heads[-1]


def default_weights(builder: str):
    """The builder's default weights member (None for a builder without weights)."""
    enum = _tvm().get_model_weights(builder)
    return enum.DEFAULT if enum is not None and len(enum) else None


def weights_member(name: str, member: str | None):
    """The weights member ``member`` (a name such as IMAGENET1K_V2, or DEFAULT) of zoo model ``name``, or its default;
    ValueError naming the members it has."""
    builder = name.removeprefix(ZOO_PREFIX)
    enum = _tvm().get_model_weights(builder)
    if member is None or member == "DEFAULT":
        return enum.DEFAULT
    if member not in enum.__members__:
        members = ", ".join(m for m in enum.__members__)
        raise ValueError(f"{member!r} is not a weights member of {name} ({enum.__name__}); its members: {members}")
    return enum[member]


def fixed_input_size(name: str, member) -> int | None:
    """The image side a pretrained model of this family must see (its position embedding is sized for it), or None
    when any size the network takes will do."""
    if _size_keyword(name.removeprefix(ZOO_PREFIX)) is None or member is None:
        return None
    return int(member.meta["min_size"][0])


def _load_backbone(model: nn.Module, head: str, state: dict, builder: str) -> None:
    """Every parameter but the head's from the ImageNet ``state``; anything else missing or left over is an error."""
    state = dict(state)
    if builder.startswith("densenet"):
        state = {(_DENSENET_KEY.sub(r"\1\2", key)): value for key, value in state.items()}
    head_keys = {key for key in state if key.startswith(head + ".")}
    aux = {key for key in state if key.startswith(AUX_PREFIXES)}
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head_keys | aux},
                                                strict=False)
    stray = [key for key in missing if not key.startswith(head + ".")]
    if stray or unexpected:
        raise ValueError(f"the weights do not fit {builder}: missing {stray[:5]}, unexpected {unexpected[:5]}")


def _register(name: str) -> None:
    builder = name.removeprefix(ZOO_PREFIX)
    member = default_weights(builder)
    native = int(member.transforms().crop_size[0]) if member is not None else 224
    head = find_head(_build_on_meta(builder, HEAD_PROBE_CLASSES, native), HEAD_PROBE_CLASSES)
    weights = f"{type(member).__name__}.{member.name}" if member is not None else None

    @register_model(name, head=head, input_size=native, channels=3, pretrained_weights=weights,
                    options=(WEIGHTS_OPTION,))
    def build(num_classes: int, in_channels: int = 3, input_size: int = native, imagenet_state=None,
              weights: str | None = None) -> nn.Module:
        # ``weights`` (the member) chose the state dict that build_model read: nothing left to do with it here.
        model = _build(builder, num_classes, input_size, imagenet_state is not None)
        if imagenet_state is not None:
            _load_backbone(model, head, imagenet_state, builder)
        return model


def _build_on_meta(builder: str, num_classes: int, input_size: int) -> nn.Module:
    return on_meta(lambda: _build(builder, num_classes, input_size, False))


def register(name: str):
    """Register zoo model ``name`` (``torchvision.<builder>``) unless it is; its spec. UnknownZooModel naming the
    closest names for one torchvision does not ship."""
    if is_registered(name):
        return get_spec(name)
    builder = name.removeprefix(ZOO_PREFIX)
    if not is_zoo_name(name) or builder not in builder_names():
        near = closest(name)
        hint = f"; the closest: {', '.join(near)}" if near else ""
        raise UnknownZooModel(f"'{name}' is not one of torchvision's {len(builder_names())} classification models "
                              f"(torchvision.models.list_models(module=torchvision.models)){hint}")
    _register(name)
    return get_spec(name)


def _resolve(name: str) -> bool:
    """get_spec's fallback: a zoo name is registered when first asked for (a job's process, a test)."""
    if not is_zoo_name(name):
        return False
    try:
        register(name)
    except UnknownZooModel:
        return False
    return True


add_resolver(_resolve)
