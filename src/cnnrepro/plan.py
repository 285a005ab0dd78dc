"""Compute plan: FLOPs, time and memory of every training run of a configuration on a named device.

The cost of a run is counted, not guessed: each model is built once on the ``meta`` device (no memory, no
weights) and one image is passed through it under ``FlopCounterMode`` and an op counter. That gives, per image,
the forward FLOPs, the number of aten ops (what a step costs in launch overhead when the model is small), the
bytes of every op output (what training keeps for the backward pass) and, for each layer, how much of all that
happens before it. A freeze level then splits the forward pass into a fixed prefix and a trained tail:

* backward FLOPs are counted as 2x the forward FLOPs of the tail (gradients of the inputs and of the weights),
  not by ``FlopCounterMode``, which ignores ``groups`` in the weight gradient of grouped convolutions and
  inflates depthwise backward FLOPs about 20x in torch 2.14 (../shared/spec/platform-notes.md);
* a run times images times epochs: per epoch one training pass (forward + backward) and one evaluation pass
  (forward), plus the final test and evaluation passes, plus, where features are cached, one forward pass of
  the prefix over every image.

Time on a device is ``max(FLOPs / sustained FLOP/s, steps x ops x seconds per op)`` per pass: a big model is
bound by arithmetic, a tiny one (seed 003's KMNIST nets) by launching kernels. GPU figures are datasheet peaks
times an efficiency calibrated on the one GPU measurement we have (seed 000's T4 times); the CPU figure is
measured on this machine in a few seconds (:func:`calibrate_cpu`).

Schedules that stop early (plateau_drop, keras_plateau) are counted at the authors' observed stop epoch where
the spec has one (seed 003) and otherwise at their ``max_epochs`` cap, an upper bound; every row says which.

Savings are modelled from the configuration and labelled: feature caching of head-only runs (what the training
engine does today, :func:`cnnrepro.feature_cache.plan`), frozen-prefix caching, warm-started epoch grids and
``eval_every`` (see :class:`Savings`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

# ---------------------------------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A GPU's dense peak throughput per number format (FLOP/s) and its memory, from the vendor's datasheet."""

    name: str
    label: str
    fp32: float
    tf32: float | None  # dense TF32 tensor-core peak; None: no TF32 (pre-Ampere)
    bf16: float | None  # dense bf16 tensor-core peak; None: no native bf16
    memory_gib: float
    capability: tuple[int, int]


# Peaks are dense (NVIDIA prints tensor-core figures "with sparsity", twice the dense rate).
DEVICES = {
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOPS, TF32 Tensor Core 989 TFLOPS* and
    # BF16 Tensor Core 1,979 TFLOPS* (*with sparsity; dense is half), 80 GB.
    "h100": Device("h100", "NVIDIA H100 SXM 80GB", 67e12, 494.5e12, 989.5e12, 80, (9, 0)),
    # NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5 TFLOPS, TF32 Tensor Core 156 TFLOPS (312 with sparsity),
    # BF16 Tensor Core 312 TFLOPS (624 with sparsity); 40 GB, the smaller of the two models.
    "a100": Device("a100", "NVIDIA A100 40GB", 19.5e12, 156e12, 312e12, 40, (8, 0)),
    # NVIDIA T4 Tensor Core GPU datasheet: single precision 8.1 TFLOPS, 16 GB GDDR6. Turing has neither TF32 nor
    # native bf16 (recipe.effective_speed leaves both off there).
    "t4": Device("t4", "NVIDIA T4 16GB", 8.1e12, None, None, 16, (7, 5)),
}
DEVICE_CHOICES = (*DEVICES, "cpu")

# Sustained fraction of the fp32 peak, calibrated on seed 000's published times (ResNet18/34/50 linear probes on
# MNIST at 224 px, 30 epochs, one Tesla T4: 3,736 / 4,748 / 7,002 s): the FLOPs this model counts for those
# three runs divided by (T4 peak x their total time). Per model it is 0.25 / 0.40 / 0.30; the authors' input
# pipeline (a per-image resize on Colab's CPU) is in those times, so ours should be faster, not slower.
# tests/test_plan.py recomputes it from the measurement (:func:`t4_calibration`).
GPU_EFFICIENCY = 0.32
SEED000_T4_SECONDS = {"resnet18": 3736, "resnet34": 4748, "resnet50": 7002}
# Tensor-core peaks (TF32, bf16) are far harder to reach for convolutional nets; no measurement exists here, so
# this is an assumption, not a calibration: read bf16/TF32 estimates as rough.
TENSOR_EFFICIENCY = 0.15
# Eager PyTorch launches one kernel per aten op; the CPU-side cost (dispatch + launch) is a few to ~20 us.
# Assumed, not measured (no GPU here). A step of a small model costs at least ops x this.
GPU_SECONDS_PER_OP = 10e-6
# Optimizer kernels per step on a GPU (torch's foreach implementations: a handful of multi-tensor launches).
GPU_OPTIMIZER_OPS = 20
# Start-up of a training job: interpreter and torch imports, reading the data, building the model.
JOB_STARTUP_SECONDS = 30.0
# A CPU rate to plan with when no calibration was run (the workflow's resources, which must not take seconds
# at every start): the lower end of what calibrate_cpu measured on this project's machine kind (2 cores,
# torch 2.14.1, 2026-11): ~45 GFLOP/s per thread on a ResNet18-CIFAR training step.
REFERENCE_CPU_FLOPS_PER_THREAD = 30e9
REFERENCE_CPU_SECONDS_PER_OP = 20e-6


@dataclass(frozen=True)
class Rate:
    """How fast a device computes for this plan: sustained FLOP/s, the cost of one op, and where they come from."""

    device: str
    label: str
    flops_per_second: float
    seconds_per_op: float
    basis: str
    memory_gib: float | None = None


def gpu_rate(name: str, speed: dict | None = None) -> Rate:
    """The rate of GPU ``name`` under the config's ``speed`` switches (fp32 unless TF32/bf16 are on and exist)."""
    from cnnrepro.recipe import effective_speed

    device = DEVICES[name]
    speed = {"channels_last": False, "amp_bf16": False, "tf32": False, "cudnn_benchmark": False, "compile": False,
             **(speed or {})}
    used = effective_speed(speed, "cuda", True, device.capability)
    if used["amp_bf16"] and device.bf16:
        peak, fmt, eff = device.bf16, "bf16 tensor cores (speed.amp_bf16)", TENSOR_EFFICIENCY
    elif used["tf32"] and device.tf32:
        peak, fmt, eff = device.tf32, "TF32 tensor cores (speed.tf32)", TENSOR_EFFICIENCY
    else:
        peak, fmt, eff = device.fp32, "fp32, no TF32 (as the papers)", GPU_EFFICIENCY
    how = ("calibrated on seed 000's T4 times" if eff == GPU_EFFICIENCY else "assumed, no measurement")
    basis = (f"{device.label}: {fmt} peak {peak / 1e12:.1f} TFLOP/s (datasheet) x efficiency {eff:.2f} ({how}); "
             f"{GPU_SECONDS_PER_OP * 1e6:.0f} us per op (assumed)")
    return Rate(name, device.label, peak * eff, GPU_SECONDS_PER_OP, basis, device.memory_gib)


def reference_cpu_rate(threads: int) -> Rate:
    """A CPU rate without measuring (for the workflow's resources): the reference figure per thread."""
    return Rate("cpu", f"CPU, {threads} threads (reference)", REFERENCE_CPU_FLOPS_PER_THREAD * threads,
                REFERENCE_CPU_SECONDS_PER_OP,
                f"reference CPU rate {REFERENCE_CPU_FLOPS_PER_THREAD / 1e9:.0f} GFLOP/s per thread x {threads} "
                "threads (not measured on this machine)")


@contextlib.contextmanager
def _threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibrate_cpu(threads: int, seconds: float = 1.5) -> Rate:
    """Measure this machine: training steps of the CIFAR ResNet18 (batch 8, 32 px) for about ``seconds``, and a
    loop of tiny ops for the per-op cost. The FLOPs are this module's count of the same step."""
    import torch

    from cnnrepro import models

    cost = model_cost("resnet18_cifar", 10, 3, None, 32, "{}")
    step_flops = 8 * 3 * cost.flops  # forward + backward (2x forward), all layers train
    torch.manual_seed(0)
    model = models.build_model("resnet18_cifar", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with _threads(threads):
        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        step()  # warm-up: first-call allocations
        steps, start = 0, time.perf_counter()
        while steps < 1 or time.perf_counter() - start < seconds:
            step()
            steps += 1
        elapsed = time.perf_counter() - start
        a, b = torch.zeros(1), torch.ones(1)
        n_ops, t0 = 2000, time.perf_counter()
        for _ in range(n_ops):
            torch.add(a, b)
        per_op = (time.perf_counter() - t0) / n_ops
    from cnnrepro.device import cpu_name

    rate = steps * step_flops / elapsed
    return Rate("cpu", f"{cpu_name()}, {threads} threads", rate, per_op,
                f"measured here: {rate / 1e9:.0f} GFLOP/s on {steps} ResNet18-CIFAR training steps (batch 8, "
                f"{threads} threads, {elapsed:.1f} s); {per_op * 1e6:.1f} us per op")


# ---------------------------------------------------------------------------------------------------------------------
# what a model costs per image
# ---------------------------------------------------------------------------------------------------------------------


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
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


@functools.lru_cache(maxsize=256)
def model_cost(model: str, num_classes: int, in_channels: int, input_size: int | None, image_size: int,
               options: str) -> ModelCost:
    """Count one image's forward pass through ``model`` built on the meta device (milliseconds, no memory).
    Cached per build: the workflow asks at every start."""
    import warnings

    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from cnnrepro import models

    class Ops(TorchDispatchMode):
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

    def build(device):
        with torch.device(device) if device else contextlib.nullcontext():
            return models.build_model(model, num_classes, in_channels=in_channels, input_size=input_size,
                                      options=json.loads(options))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = build("meta")
        except (NotImplementedError, RuntimeError):
            net = build(None)  # a builder that reads values cannot build on meta: built for real, once
        device = next(net.parameters(), torch.empty(0, device="meta")).device
        x = torch.empty(1, in_channels, image_size, image_size, device=device)
        flops, ops = FlopCounterMode(display=False), Ops()
        first: dict[str, tuple] = {}

        def pre_hook(name):
            def hook(module, inputs):
                if name not in first:
                    first[name] = (flops.get_total_flops(), ops.count, ops.bytes, _nbytes(inputs))
            return hook

        kinds = {}
        hooks = []
        for name, module in net.named_modules():
            leaf = next(module.children(), None) is None
            if name and (leaf or next(module.parameters(recurse=False), None) is not None):
                kinds[name] = (isinstance(module, _BatchNorm),
                               isinstance(module, _DropoutNd) and module.p > 0,
                               sum(p.numel() for p in module.parameters(recurse=False)),
                               sum(1 for _ in module.parameters(recurse=False)))
                hooks.append(module.register_forward_pre_hook(pre_hook(name)))
        net.eval()
        try:
            with torch.no_grad(), flops, ops:
                net(x)
        finally:
            for hook in hooks:
                hook.remove()
    order = sorted(first, key=lambda name: (first[name][1], list(kinds).index(name)))
    layers = tuple(Layer(name, first[name][0], first[name][1], first[name][2], first[name][3], kinds[name][0],
                         kinds[name][1]) for name in order)
    params = {name: (k[2], k[3]) for name, k in kinds.items() if k[3]}
    return ModelCost(int(flops.get_total_flops()), ops.count, ops.bytes, ops.max,
                     sum(p.numel() for p in net.parameters()), params, layers)


def settings_cost(settings: dict) -> ModelCost:
    """:func:`model_cost` of the model a run's settings build."""
    from cnnrepro import datasets

    size = settings["input"]["size"]
    image = size or datasets.DATASETS[settings["dataset"]].size
    return model_cost(settings["model"], settings["num_classes"], settings["in_channels"], size, image,
                      json.dumps(settings["model_options"], sort_keys=True))


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
    from cnnrepro import augment, models

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
    # cnnrepro.feature_cache does for the dropout before a head): it belongs to the tail.
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
    import warnings

    import torch

    from cnnrepro import feature_cache
    from cnnrepro.recipe import build_run_model

    settings = json.loads(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                net = build_run_model(settings, pretrained=False)
        except (NotImplementedError, RuntimeError):
            net = build_run_model(settings, pretrained=False)
    decision = feature_cache.plan(settings, net)
    return decision.use, decision.reason


def engine_cache(settings: dict) -> tuple[bool, str]:
    """Whether the training engine caches a prefix's output for this run (:func:`cnnrepro.feature_cache.plan`,
    asked of the model built on the meta device), and why (not). Cached per distinct answerable question."""
    shared = {k: v for k, v in settings.items() if k not in _CACHE_IRRELEVANT}
    shared["recipe"] = {k: v for k, v in settings["recipe"].items() if k not in _CACHE_IRRELEVANT_RECIPE}
    return _engine_cache(json.dumps(shared, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# images and epochs of a run
# ---------------------------------------------------------------------------------------------------------------------


def split_counts(dataset: str, data_settings: dict) -> dict[str, int]:
    """Images in the compact dataset's train and test splits, as ``prepare`` makes them."""
    from cnnrepro.datasets import DATASETS

    info = DATASETS[dataset]
    source = data_settings["source"]
    if source == "synthetic":
        train, test = data_settings["synthetic_train"], data_settings["synthetic_test"]
    elif source == "npz":
        train, test = _npz_count(data_settings["npz"]["train"]), None
        if data_settings["npz"].get("test"):
            test = _npz_count(data_settings["npz"]["test"])
    else:
        train, test = info.split_sizes["train"], info.split_sizes["test"]
    carve = data_settings.get("split_test_from_train")
    if carve:
        train, test = train - carve, carve
    test = test if test is not None else info.split_sizes["test"]
    caps = (data_settings["subsample_train"], data_settings["subsample_test"])
    return {"train": min(train, caps[0] or train), "test": min(test, caps[1] or test)}


@functools.lru_cache(maxsize=32)
def _npz_count(path: str) -> int:
    import numpy as np

    try:
        with np.load(path) as data:
            return len(data["y"])
    except (OSError, KeyError, ValueError):
        return 0


def run_images(settings: dict, data_settings: dict) -> dict[str, int]:
    """Images per pass of a run: train (after a validation carve and a fixed expansion), eval, test."""
    from cnnrepro import augment

    counts = split_counts(settings["dataset"], data_settings)
    train, test = counts["train"], counts["test"]
    evaluation = test
    if settings["eval_split"] == "val":
        evaluation = round(train * settings["val_fraction"])
        train -= evaluation
    if augment.AUGMENTATIONS[settings["augment"]].copies:
        train *= settings["augment_copies"]
    return {"train": train, "eval": evaluation, "test": test, "eval_is_test": settings["eval_split"] == "test"}


# Published stop epochs of runs whose schedule stops early (studies.md, seed 003 "Reference outcomes"; the same
# lengths as the authors' Keras histories in semcovici/kmnist, results/history/*.json): (dataset, model, augment).
OBSERVED_STOP_EPOCHS = {
    ("kmnist", "cnn", "none"): 596,
    ("kmnist", "cnn", "kmnist10x"): 334,
    ("kmnist", "cnn_nopool", "none"): 535,
    ("kmnist", "fcnn", "none"): 1154,
    ("kmnist", "fcnn", "kmnist10x"): 507,
}
OBSERVED_SCHEDULE = "keras_plateau"


def run_epochs(settings: dict) -> tuple[int, str]:
    """(epochs, basis): ``fixed`` for a constant schedule; for one that stops early, ``authors`` (their observed
    stop epoch, where the spec has one and the cap allows it) or ``cap`` (max_epochs: an upper bound)."""
    recipe = settings["recipe"]
    if recipe["schedule"] == "constant":
        return recipe["epochs"], "fixed"
    cap = recipe["max_epochs"]
    observed = OBSERVED_STOP_EPOCHS.get((settings["dataset"], settings["model"], settings["augment"]))
    if observed and recipe["schedule"] == OBSERVED_SCHEDULE and observed <= cap:
        return observed, "authors"
    return cap, "cap"


# ---------------------------------------------------------------------------------------------------------------------
# savings
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Savings:
    """Which time savings a plan applies. Each is exact (the same numbers come out) and applies only where it can:

    * ``cache``: train on the output of a fixed frozen prefix computed once instead of on images. ``none``: never;
      ``engine``: where the training engine does it (:func:`cnnrepro.feature_cache.plan`, asked per run: today
      head-only runs over a fixed backbone); ``all``: wherever the frozen prefix is fixed (no BatchNorm statistics
      updated, no active dropout, no per-batch augmentation), e.g. seed 004's fire2-fire7 under
      last_two_fire_and_head (:func:`stages`);
    * ``eval_every``: evaluate every N epochs and after the last, where neither the schedule (monitoring an eval
      metric) nor the checkpoint selection (select: best) reads every epoch. None: each recipe's ``eval_every``;
    * ``chain``: runs that differ only in their epoch count continue each other (:mod:`cnnrepro.chaining`, the
      config's ``chain_epoch_grids``): seed 004's 50/150/300 grid trains 300 epochs per (freeze level, batch size)
      instead of 500.
    """

    cache: str = "engine"
    eval_every: int | None = None
    chain: bool = False

    def label(self) -> str:
        parts = {"none": [], "engine": ["feature caching where the engine does it"],
                 "all": ["frozen-prefix caching wherever the prefix is fixed"]}[self.cache]
        if self.chain:
            parts.append("warm-started epoch grids")
        parts.append("each recipe's eval_every" if self.eval_every is None else
                     "evaluation every epoch" if self.eval_every == 1 else f"eval_every {self.eval_every}")
        return "; ".join(parts)


NO_SAVINGS = Savings(cache="none", eval_every=1, chain=False)


def configured_savings(config: dict) -> Savings:
    """What the configuration does: the engine's caching, each recipe's eval_every, ``chain_epoch_grids``."""
    return Savings(cache="engine", eval_every=None, chain=bool(config.get("chain_epoch_grids", False)))


def all_savings(eval_every: int = 10) -> Savings:
    return Savings(cache="all", eval_every=eval_every, chain=True)


def effective_eval_every(settings: dict, savings: Savings) -> int:
    """Every how many epochs a run evaluates: 1 when its schedule monitors an eval metric or it selects the best
    epoch (what cnnrepro.train does with recipe.eval_every)."""
    recipe = settings["recipe"]
    every = recipe.get("eval_every", 1) if savings.eval_every is None else savings.eval_every
    if recipe["select"] == "best" or str(recipe.get("monitor", "")).startswith("eval_"):
        return 1
    return every


# ---------------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """``images`` through the model at ``batch``: FLOPs and ops per image / per step."""

    what: str
    images: int
    batch: int
    flops_per_image: float
    ops_per_step: int

    @property
    def flops(self) -> float:
        return self.images * self.flops_per_image

    def seconds(self, rate: Rate) -> float:
        steps = math.ceil(self.images / self.batch) if self.images else 0
        return max(self.flops / rate.flops_per_second, steps * self.ops_per_step * rate.seconds_per_op)


@dataclass
class RunPlan:
    run_id: str
    study: str
    epochs: int  # epochs the run trains (its own, before chaining)
    epochs_basis: str  # fixed | authors | cap
    trained_epochs: int  # epochs this job trains (after warm-starting from a shorter run)
    chained_from: str | None
    cache: str  # none | head (features) | prefix
    cache_note: str
    evaluations: int
    passes: list[Pass]
    device_bytes: int  # device memory: weights, gradients, optimizer state, activations, data, cache
    host_mem_mb: int
    notes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.passes)

    def seconds(self, rate: Rate) -> float:
        return JOB_STARTUP_SECONDS + sum(p.seconds(rate) for p in self.passes)


OPTIMIZER_STATES = {"sgd": lambda r: 1 if r.get("momentum") else 0, "adam": lambda r: 2,
                    "rmsprop": lambda r: 1, "adadelta": lambda r: 2}


def _eval_batch(recipe: dict) -> int:
    return recipe["eval_batch_size"] or max(recipe["batch_size"], 256)


def plan_run(settings: dict, data_settings: dict, savings: Savings = Savings(), trained_epochs: int | None = None,
             chained_from: str | None = None) -> RunPlan:
    """The passes one training job makes, under ``savings``. ``trained_epochs``/``chained_from``: the job
    continues the run ``chained_from`` and trains only the remaining epochs."""
    cost = settings_cost(settings)
    stage = stages(settings, cost)
    recipe = settings["recipe"]
    epochs, basis = run_epochs(settings)
    trained = epochs if trained_epochs is None else trained_epochs
    images = run_images(settings, data_settings)
    distinct = images["train"] + images["test"] + (0 if images["eval_is_test"] else images["eval"])
    from cnnrepro.feature_cache import MAX_BYTES

    fits = stage.prefix_input_bytes * distinct <= MAX_BYTES
    if savings.cache == "engine":
        cached, note = engine_cache(settings)
    elif savings.cache == "all":
        cached, note = stage.prefix_fixed, (
            "the frozen prefix is fixed: computed once, only the rest trains" if stage.prefix_fixed
            else f"no cache: {stage.prefix_reason}")
    else:
        cached, note = False, "caching off in this plan"
    if cached and not fits:
        cached, note = False, (f"the cache would take {stage.prefix_input_bytes * distinct / 2**30:.1f} GiB, over "
                               f"the {MAX_BYTES / 2**30:.0f} GiB budget (feature_cache.MAX_BYTES)")
    cache = "prefix" if cached else "none"
    if cached:
        tail_flops, tail_ops, prefix_flops, cached_bytes = stage.tail_flops, stage.tail_ops, \
            cost.flops - stage.tail_flops, stage.prefix_input_bytes
    else:
        tail_flops, tail_ops, prefix_flops, cached_bytes = cost.flops, cost.ops, 0, 0
    batch, eval_batch = recipe["batch_size"], _eval_batch(recipe)
    every = effective_eval_every(settings, savings)
    evaluations = math.ceil(trained / every)
    opt_ops = GPU_OPTIMIZER_OPS
    passes = []
    if cached_bytes:
        passes.append(Pass("cache", distinct, eval_batch, prefix_flops, cost.ops - stage.tail_ops))
    # Forward over what runs each step, backward (2x forward) over the tail only.
    passes.append(Pass("train", images["train"] * trained, batch, tail_flops + 2 * stage.tail_flops,
                       tail_ops + 2 * stage.tail_ops + opt_ops))
    passes.append(Pass("eval", images["eval"] * evaluations, eval_batch, tail_flops, tail_ops))
    # The record: test and evaluation split once more (twice if the best epoch is not the last).
    final = images["test"] + images["eval"]
    passes.append(Pass("final", final, eval_batch, tail_flops, tail_ops))
    notes = []
    if basis == "authors":
        notes.append(f"{epochs} epochs: the authors' observed stop (cap {recipe['max_epochs']})")
    elif basis == "cap":
        notes.append(f"{epochs} epochs: the max_epochs cap, an upper bound (the schedule stops earlier)")
    if every > 1:
        notes.append(f"evaluated every {every} epochs")
    if chained_from:
        notes.append(f"continues {chained_from.split('/', 4)[-1]}: trains {trained} of its {epochs} epochs")
    return RunPlan(settings["run_id"], settings["study"], epochs, basis, trained, chained_from, cache, note,
                   evaluations, passes, device_bytes(settings, data_settings, cost, stage, cached_bytes * distinct),
                   _host_mem_mb(settings, data_settings), notes)


def device_bytes(settings: dict, data_settings: dict, cost: ModelCost, stage: Stages, cache_bytes: int) -> int:
    """Memory on the training device: weights, gradients and optimizer state, one batch's activations (the tail's
    op outputs are kept for the backward pass; two of the largest are alive at once), the uint8 data, the cache."""
    recipe = settings["recipe"]
    states = OPTIMIZER_STATES[recipe["optimizer"]](recipe)
    weights = 4 * (cost.params + stage.trainable_params * (1 + states))
    train_act = recipe["batch_size"] * (stage.tail_bytes + 2 * cost.max_output_bytes)
    eval_act = _eval_batch(recipe) * 2 * cost.max_output_bytes
    from cnnrepro.datasets import DATASETS

    info = DATASETS[settings["dataset"]]
    images = run_images(settings, data_settings)
    data = (images["train"] + images["eval"] + images["test"]) * info.channels * info.size * info.size
    return weights + max(train_act, eval_act) + data + cache_bytes


def activation_bytes(settings: dict) -> int:
    """Activation memory of one training step (what :func:`device_bytes` counts), for host-memory requests."""
    cost = settings_cost(settings)
    stage = stages(settings, cost)
    recipe = settings["recipe"]
    return max(recipe["batch_size"] * (stage.tail_bytes + 2 * cost.max_output_bytes),
               _eval_batch(recipe) * 2 * cost.max_output_bytes)


def _host_mem_mb(settings: dict, data_settings: dict) -> int:
    from cnnrepro import resources

    return resources.train_mem_mb(settings, data_settings)


# ---------------------------------------------------------------------------------------------------------------------
# a whole configuration
# ---------------------------------------------------------------------------------------------------------------------


def plan_runs(config: dict, savings: Savings, by_run: dict | None = None) -> list[RunPlan]:
    """Every run's plan under ``savings``; with ``chain``, the runs of an epoch grid continue each other."""
    from cnnrepro import config as cfg

    by_run = by_run if by_run is not None else cfg.settings_by_run(config)
    sources = chain_sources(by_run) if savings.chain else {}
    plans = []
    for run_id, settings in by_run.items():
        data = cfg.data_settings(config, settings["dataset"])
        source = sources.get(run_id)
        if source:
            trained = run_epochs(settings)[0] - run_epochs(by_run[source])[0]
            plans.append(plan_run(settings, data, savings, max(trained, 0), source))
        else:
            plans.append(plan_run(settings, data, savings))
    return plans


def chain_sources(by_run: dict[str, dict]) -> dict[str, str]:
    """run id -> the run it continues from, as the workflow chains them (cnnrepro.chaining)."""
    from cnnrepro import chaining

    return chaining.chain_sources(by_run)


@dataclass
class StudyTotal:
    study: str
    runs: int
    flops: float
    seconds: float


def study_totals(plans: Iterable[RunPlan], rate: Rate) -> list[StudyTotal]:
    totals: dict[str, StudyTotal] = {}
    for p in plans:
        total = totals.setdefault(p.study, StudyTotal(p.study, 0, 0.0, 0.0))
        total.runs += 1
        total.flops += p.flops
        total.seconds += p.seconds(rate)
    return list(totals.values())


def rate_for(device: str, config: dict, calibrate: bool = True) -> Rate:
    """The rate of ``device`` (h100, a100, t4 or cpu) for this config's speed switches and thread count."""
    if device == "cpu":
        threads = config["train_threads"]
        return calibrate_cpu(threads) if calibrate else reference_cpu_rate(threads)
    return gpu_rate(device, config["speed"])


# ---------------------------------------------------------------------------------------------------------------------
# calibration against the one GPU measurement we have
# ---------------------------------------------------------------------------------------------------------------------


def t4_calibration() -> dict[str, float]:
    """The fp32 efficiency each of seed 000's T4 times implies (model FLOPs / (T4 peak x seconds)), and the
    pooled one (all FLOPs / all peak-seconds), which is :data:`GPU_EFFICIENCY`. Their runs as config.yaml has
    them: 60,000 train + 10,000 test MNIST images at 224 px in RGB, 30 epochs, BatchNorm statistics updated
    (so no caching), evaluated every epoch; the final record passes are not in the authors' times."""
    settings_base = {"num_classes": 10, "in_channels": 3, "input": {"size": 224}, "model_options": {},
                     "trainable": ["head"], "augment": "none", "recipe": {"bn_frozen": "train"}}
    peak = DEVICES["t4"].fp32
    out, flops_all, seconds_all = {}, 0.0, 0.0
    for model, seconds in SEED000_T4_SECONDS.items():
        settings = {**settings_base, "model": model, "dataset": "mnist"}
        cost = settings_cost(settings)
        stage = stages(settings, cost)
        flops = 30 * (60_000 * (cost.flops + 2 * stage.tail_flops) + 10_000 * cost.flops)
        out[model] = flops / (peak * seconds)
        flops_all += flops
        seconds_all += seconds
    out["pooled"] = flops_all / (peak * seconds_all)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the slow-run guard: a local run without a GPU that would take days stops before any job
# ---------------------------------------------------------------------------------------------------------------------

# A local CPU-only run estimated above this stops at start-up unless allow_slow is set.
SLOW_RUN_HOURS = 6.0
# Bounds that settle most configurations without measuring: at this many times the reference rate a run that is
# still too slow is too slow anywhere; at the reference rate one that is fast enough is fast enough.
OPTIMISTIC_CPU_FACTOR = 4.0


def local_cpu_hours(plans: Iterable[RunPlan], rate: Rate, parallel: int) -> float:
    """Wall hours of ``plans`` on the CPU with ``parallel`` training jobs at once."""
    return sum(p.seconds(rate) for p in plans) / max(1, parallel) / 3600


def slow_run_message(config: dict, plans: list[RunPlan], cores: int | None, gpus: int,
                     calibrate=calibrate_cpu) -> str | None:
    """Why a local run of ``plans`` (the training jobs still to run) must not start, or None when it may: it
    trains on the CPU (device cpu, or no GPU visible) and its estimate exceeds SLOW_RUN_HOURS. The CPU is
    measured (``calibrate``, a few seconds) only when the reference bounds do not settle it."""
    if config.get("allow_slow") or not plans or (gpus > 0 and config["device"] != "cpu"):
        return None
    threads = config["train_threads"]
    parallel = max(1, (cores or 1) // threads)
    reference = reference_cpu_rate(threads)
    if local_cpu_hours(plans, reference, parallel) <= SLOW_RUN_HOURS:
        return None
    fast = Rate("cpu", reference.label, reference.flops_per_second * OPTIMISTIC_CPU_FACTOR,
                reference.seconds_per_op / OPTIMISTIC_CPU_FACTOR, reference.basis)
    rate = reference if local_cpu_hours(plans, fast, parallel) > SLOW_RUN_HOURS else calibrate(threads)
    hours = local_cpu_hours(plans, rate, parallel)
    if hours <= SLOW_RUN_HOURS:
        return None
    why = "device: cpu" if config["device"] == "cpu" else "no GPU is visible on this machine"
    longest = max(plans, key=lambda p: p.seconds(rate))
    return (f"This local run would train {len(plans)} run(s) on the CPU ({why}): about {hours:.0f} hours "
            f"({sum(p.flops for p in plans) / 1e15:.1f} PFLOP at {rate.flops_per_second / 1e9:.0f} GFLOP/s, "
            f"{parallel} job(s) at once; the longest, {longest.run_id}, about "
            f"{longest.seconds(rate) / 3600:.0f} h), over the {SLOW_RUN_HOURS:g} h that a local run starts without "
            "asking. Stopped before any job. To proceed: run it where there is a GPU, or on a cluster "
            "(snakemake --workflow-profile profiles/slurm); or take a preset (--configfile presets/quick.yaml: "
            "real data, subsampled, 3 epochs; presets/smoke.yaml: minutes); or start it anyway with "
            "--config allow_slow=true. `cnnrepro plan --device cpu` estimates every run.")
