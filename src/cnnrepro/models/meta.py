"""Building a network without memory or weights: on PyTorch's ``meta`` device every module and shape exists and no
data does, so the start-up checks and the compute plan build even a 600-million-parameter model in milliseconds."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter and buffer moves to the meta device as it is registered, while the other tensors a builder
    computes with stay real: for builders that read values while they build (RegNet's widths, ``.tolist()``),
    which the meta device cannot give. Initialisation after registration then costs nothing."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with its parameters and buffers on the meta device: under ``torch.device("meta")``, or, for a
    builder that reads tensor values while it builds, with each parameter moved there as it is registered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Initializing zero-element tensors is a no-op"
        try:
            with torch.device("meta"):
                return build()
        except (NotImplementedError, RuntimeError) as error:
            if "meta" not in str(error):
                raise
        with parameters_on_meta():
            return build()
