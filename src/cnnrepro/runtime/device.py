"""Which device a job runs on: one place that asks torch about CUDA."""

from __future__ import annotations

import os
import platform

import torch


def cuda_available() -> bool:
    """Seam around ``torch.cuda.is_available`` so tests can pretend either way."""
    return torch.cuda.is_available()


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a CUDA device is an error that says what to set.

    A job pinned to the CPU hides the GPUs from itself, so that nothing in it (torch's optimizers check for
    CUDA graph capture at every step) creates a CUDA context on a GPU machine.
    """
    if requested == "cpu":
        if not torch.cuda.is_initialized():
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return torch.device("cpu")
    if requested == "cuda" and not cuda_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available; set device: auto or cpu")
    if requested in ("cuda", "auto") and cuda_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (e.g. "Intel(R) Xeon(R) Processor"), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
