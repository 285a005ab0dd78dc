"""What a model costs per image, counted rather than guessed: each model is built once on the ``meta`` device (no
memory, no weights) and one image is passed through it under ``FlopCounterMode`` and an op counter. That gives
the forward FLOPs, the number of aten ops (what a step costs in launch overhead when the model is small), the
bytes of every op output (what training keeps for the backward pass) and, for each layer, how much of all that
happens before it; a freeze level then splits the forward pass into a fixed prefix and a trained tail."""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cnnrepro import models
from cnnrepro.data import augment
from cnnrepro.data.catalog import DATASETS
from cnnrepro.engine import feature_cache
from cnnrepro.engine.recipe import build_run_model


@dataclass(frozen=True)
class Layer:
    """A leaf module (or one holding its own parameters), in the order of its first call in the forward pass."""

    name: str
    flops_before: int  # forward FLOPs per image of everything called before it
    ops_before: int
    bytes_before: int  # bytes of op outputs before it
    input_bytes: int  # bytes per image of its input: what a cache of everything before it holds
    batchnorm: bool
    dropout: bool  # dropout with p > 0


@dataclass(frozen=True)
class ModelCost:
    flops: int  # forward FLOPs per image
    ops: int  # aten ops in one forward pass
    output_bytes: int  # bytes per image of every op output of one forward pass (an upper bound on saved tensors)
    max_output_bytes: int  # the largest single op output per image
    params: int
    param_tensors: dict  # layer name -> (parameter count, parameter tensors) for layers that hold parameters
    layers: tuple[Layer, ...]


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops of a forward pass and the bytes of their outputs (the largest one too)."""

    def __init__(self):
        super().__init__()
        self.count = self.bytes = self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views (a weight's transpose) and in-place ops allocate nothing new.
        size = 0 if func.is_view or func._schema.is_mutable else _nbytes(out)
        self.count += 1
        self.bytes += size
        self.max = max(self.max, size)
        return out


def _counted_modules(net: torch.nn.Module) -> dict[str, tuple[bool, bool, int, int]]:
    """Every leaf module (or one holding its own parameters): name -> (BatchNorm, active dropout, its parameters,
    its parameter tensors)."""
    kinds = {}
    for name, module in net.named_modules():
        own = list(module.parameters(recurse=False))
        if name and (next(module.children(), None) is None or own):
            kinds[name] = (isinstance(module, _BatchNorm), isinstance(module, _DropoutNd) and module.p > 0,
                           sum(p.numel() for p in own), len(own))
    return kinds


@functools.lru_cache(maxsize=256)
def model_cost(model: str, num_classes: int, in_channels: int, input_size: int | None, image_size: int,
               options: str) -> ModelCost:
    """Count one image's forward pass through ``model`` built on the meta device (milliseconds, no memory).
    Cached per build: the workflow asks at every start. A model whose forward pass the meta device cannot run (a
    model file's network that reads tensor values) is built and counted on the CPU instead."""
    net = models.build_on_meta(model, num_classes, in_channels, input_size, json.loads(options)).eval()
    try:
        return _count(net, models.blank_batch(net, 1, in_channels, image_size))
    except NotImplementedError:
        pass  # an op without a meta kernel
    except RuntimeError as error:
        if "meta" not in str(error):
            raise
    net = models.build_model(model, num_classes, in_channels=in_channels, input_size=input_size,
                             options=json.loads(options)).eval()
    return _count(net, torch.zeros(1, in_channels, image_size, image_size))


def _count(net: torch.nn.Module, x: torch.Tensor) -> ModelCost:
    """FLOPs, ops and bytes of ``net`` on the one-image batch ``x`` (made before the counters start: the input is
    no op of the model), and for each counted layer what came before its first call."""
    flops, ops = FlopCounterMode(display=False), _OpCounter()
    kinds = _counted_modules(net)
    first: dict[str, tuple] = {}  # layer -> (FLOPs, ops, bytes before its first call, its input's bytes)

    def before(name):
        def hook(module, inputs):
            first.setdefault(name, (flops.get_total_flops(), ops.count, ops.bytes, _nbytes(inputs)))
        return hook

    hooks = [module.register_forward_pre_hook(before(name)) for name, module in net.named_modules()
             if name in kinds]
    try:
        with warnings.catch_warnings(), torch.no_grad(), flops, ops:
            warnings.simplefilter("ignore")
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    order = sorted(first, key=lambda name: (first[name][1], list(kinds).index(name)))
    layers = tuple(Layer(name, *first[name], kinds[name][0], kinds[name][1]) for name in order)
    params = {name: (k[2], k[3]) for name, k in kinds.items() if k[3]}
    return ModelCost(int(flops.get_total_flops()), ops.count, ops.bytes, ops.max,
                     sum(p.numel() for p in net.parameters()), params, layers)


def image_size(settings: dict) -> int:
    """The side of the images a run's model sees: its input size, else the dataset's own."""
    return settings["input"]["size"] or DATASETS[settings["dataset"]].size


def settings_cost(settings: dict) -> ModelCost:
    """:func:`model_cost` of the model a run's settings build."""
    return model_cost(settings["model"], settings["num_classes"], settings["in_channels"], settings["input"]["size"],
                      image_size(settings), json.dumps(settings["model_options"], sort_keys=True))


def _in_module(layer: str, module: str) -> bool:
    return layer == module or layer.startswith(module + ".")


@dataclass(frozen=True)
class Stages:
    """A freeze level's split of the forward pass: the fixed prefix and the tail that trains (per image)."""

    tail_flops: int
    tail_ops: int
    tail_bytes: int
    prefix_input_bytes: int  # bytes per image of the tail's input: what a frozen-prefix cache holds
    prefix_fixed: bool  # the prefix computes the same function every epoch
    prefix_reason: str
    trainable_params: int
    trainable_tensors: int


def stages(settings: dict, cost: ModelCost | None = None) -> Stages:
    """Where the trained part of a run's model starts, and whether everything before it is fixed."""
    cost = cost or settings_cost(settings)
    trainable = settings["trainable"]
    if trainable == "all":
        modules = [""]
    else:
        head = models.get_spec(settings["model"]).head
        modules = [head if prefix == "head" else prefix for prefix in trainable]

    def trains(name):
        return any(module == "" or _in_module(name, module) for module in modules)

    start = next((i for i, layer in enumerate(cost.layers) if trains(layer.name)), 0)
    # Dropout right before the trained part is applied to the cached output with the same random stream (as
    # cnnrepro.engine.feature_cache does for the dropout before a head): it belongs to the tail.
    while start and cost.layers[start - 1].dropout and cost.layers[start - 1].name not in cost.param_tensors:
        start -= 1
    first = cost.layers[start]
    prefix = cost.layers[:start]
    reason = ""
    if not prefix:
        reason = "no frozen prefix (the first layer trains)"
    elif augment.AUGMENTATIONS[settings["augment"]].per_batch:
        reason = f"the training batches are augmented ({settings['augment']})"
    elif any(layer.batchnorm for layer in prefix) and settings["recipe"]["bn_frozen"] != "eval":
        reason = "BatchNorm in the frozen prefix updates its statistics (recipe.bn_frozen: train)"
    elif any(layer.dropout for layer in prefix):
        reason = "dropout in the frozen prefix"
    trained = [(n, t) for name, (n, t) in cost.param_tensors.items() if trains(name)]
    return Stages(cost.flops - first.flops_before, cost.ops - first.ops_before, cost.output_bytes - first.bytes_before,
                  first.input_bytes, not reason, reason or "fixed", sum(n for n, _ in trained),
                  sum(t for _, t in trained))


# Settings that cannot change whether the engine caches (the run's name, its length, its rates).
_CACHE_IRRELEVANT = ("run_id", "variant", "grid", "seed")
_CACHE_IRRELEVANT_RECIPE = ("lr", "epochs", "max_epochs", "batch_size", "eval_batch_size", "eval_every")


@functools.lru_cache(maxsize=256)
def _engine_cache(key: str) -> tuple[bool, str]:
    settings = json.loads(key)
    decision = feature_cache.plan(settings, build_run_model(settings, pretrained=False, meta=True))
    return decision.use, decision.reason


def engine_cache(settings: dict) -> tuple[bool, str]:
    """Whether the training engine caches a prefix's output for this run (:func:`cnnrepro.engine.feature_cache.plan`,
    asked of the model built on the meta device), and why (not). Cached per distinct answerable question."""
    shared = {k: v for k, v in settings.items() if k not in _CACHE_IRRELEVANT}
    shared["recipe"] = {k: v for k, v in settings["recipe"].items() if k not in _CACHE_IRRELEVANT_RECIPE}
    return _engine_cache(json.dumps(shared, sort_keys=True, default=str))
