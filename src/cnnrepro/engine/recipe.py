"""What a run's settings build: its model (freeze level applied), optimizer, loss and speed switches."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnrepro import models

# The class of each optimizer a recipe can name. Which recipe keys each one takes, and their defaults, are in
# the config schema's per-optimizer branches; a checked recipe holds only the chosen optimizer's keys.
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop,
              "adadelta": torch.optim.Adadelta}


def build_run_model(settings: dict, pretrained: bool | None = None, weights_dir: str | Path | None = None,
                    meta: bool = False) -> nn.Module:
    """The run's model with its freeze level applied (``pretrained`` overrides the settings). ``meta``: built on
    the meta device, shapes only (cnnrepro.models.build_on_meta), never pretrained. A model from a model file is
    imported first (a job's process has not), and must be the file the workflow checked."""
    if "model_file" in settings:
        models.load_model_file(settings["model_file"]["path"], settings["model_file"]["sha256"])
    if meta:
        model = models.build_on_meta(settings["model"], settings["num_classes"], settings["in_channels"],
                                     settings["input"]["size"], settings["model_options"])
    else:
        model = models.build_model(settings["model"], settings["num_classes"], in_channels=settings["in_channels"],
                                   input_size=settings["input"]["size"],
                                   pretrained=settings["pretrained"] if pretrained is None else pretrained,
                                   weights_dir=weights_dir, options=settings["model_options"])
    models.apply_freeze(model, settings["model"], settings["trainable"])
    return model


def make_optimizer(params, recipe: dict, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimizer; the recipe keys that are its constructor's parameters are passed on. ``fused``:
    torch's fused implementation (speed.fused_optimizer; see has_fused); otherwise torch's default one."""
    cls = OPTIMIZERS[recipe["optimizer"]]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "lr"}
    options = {key: tuple(value) if key == "betas" else value for key, value in recipe.items() if key in accepted}
    if fused:
        options["fused"] = True
    return cls(params, lr=recipe["lr"], **options)


def has_fused(optimizer: str) -> bool:
    """Whether torch has a fused implementation of the recipe's optimizer (SGD and Adam do; RMSprop and
    Adadelta do not)."""
    return "fused" in inspect.signature(OPTIMIZERS[optimizer].__init__).parameters


def make_loss(name: str, num_classes: int):
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y)
    if name == "mse":
        # Keras 'mean_squared_error' between the softmax output and the one-hot target (seed 004).
        return lambda logits, y: F.mse_loss(logits.softmax(1), F.one_hot(y, num_classes).to(logits.dtype))
    raise ValueError(f"unknown loss '{name}'; valid: ce, mse")


SPEED_SWITCHES = ("channels_last", "amp_bf16", "tf32", "cudnn_benchmark", "compile", "fused_optimizer")


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """bf16 runs natively from compute capability 8.0 (Ampere). Below it torch still reports bf16 as
    supported, through emulation, and bf16 convolutions fall back to slow kernels: never autocast there."""
    return capability is not None and tuple(capability) >= (8, 0)


def effective_speed(speed: dict, device_type: str, has_conv: bool, capability: tuple[int, int] | None = None,
                    optimizer: str | None = None) -> dict:
    """The speed switches a run actually uses, from the config's ``speed`` block, the device and the recipe's
    ``optimizer`` (a fused step exists for some; None: not known, taken as none).

    Kept free of device queries (``capability`` is the CUDA compute capability, None on CPU) so the CUDA
    decisions can be tested on a CPU-only machine. bf16, TF32 and cudnn.benchmark exist only on CUDA.
    """
    requested = {key: bool(speed[key]) for key in SPEED_SWITCHES}
    cuda = device_type == "cuda"
    return {
        "channels_last": requested["channels_last"] and has_conv,
        "amp_bf16": requested["amp_bf16"] and cuda and native_bf16(capability),
        "tf32": requested["tf32"] and cuda and capability is not None and tuple(capability) >= (8, 0),
        "cudnn_benchmark": requested["cudnn_benchmark"] and cuda,
        "compile": requested["compile"],
        "fused_optimizer": requested["fused_optimizer"] and optimizer is not None and has_fused(optimizer),
        "requested": requested,
    }


# cuBLAS is deterministic only with a fixed workspace, which must be set before its first use in a process.
CUBLAS_WORKSPACE = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def deterministic_algorithms(device: torch.device) -> None:
    """As every run computes: torch's deterministic algorithms (a warning where an op has none)."""
    if device.type == "cuda":
        for key, value in CUBLAS_WORKSPACE.items():
            os.environ.setdefault(key, value)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_backend_flags(speed: dict, device: torch.device) -> None:
    """cuDNN autotuning and TF32 as a run's switches in effect (:func:`effective_speed`) say; CUDA only."""
    if device.type == "cuda":
        # Set both ways: torch's own default allows TF32 in cuDNN convolutions, which the papers' fp32 did not use.
        torch.backends.cudnn.benchmark = speed["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = speed["tf32"]


def numerics_record(speed: dict, device: torch.device, device_name: str, capability) -> dict:
    """What the device actually computed in, for metrics.json and the report."""
    cuda = device.type == "cuda"
    return {
        "precision": "bf16 autocast" if speed["amp_bf16"] else "fp32",
        "tf32_matmul": cuda and torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": cuda and torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": cuda and torch.backends.cudnn.benchmark,
        "channels_last": speed["channels_last"],
        "compile": speed["compile"],
        "fused_optimizer": speed["fused_optimizer"],
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "device_name": device_name,
        "compute_capability": ".".join(map(str, capability)) if capability else None,
    }


def deviations(numerics: dict) -> list[str]:
    """The switches in effect that compute differently from the papers' fp32 training."""
    flags = {"tf32_matmul": "TF32 matmul", "tf32_cudnn": "TF32 cuDNN", "cudnn_benchmark": "cudnn.benchmark",
             "channels_last": "channels_last", "compile": "torch.compile",
             "fused_optimizer": "fused optimizer"}
    out = [] if numerics["precision"] == "fp32" else [numerics["precision"]]
    return out + [label for key, label in flags.items() if numerics[key]]


def autocast(device: torch.device, enabled: bool):
    # enabled=False is a true no-op, so the CPU path runs exactly as without the switch.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def to_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
