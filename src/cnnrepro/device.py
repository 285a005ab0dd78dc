"""Which device a job runs on: one place that asks torch about CUDA."""

from __future__ import annotations

import platform

import torch


def cuda_available() -> bool:
    """Seam around ``torch.cuda.is_available`` so tests can pretend either way."""
    return torch.cuda.is_available()


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a CUDA device is an error that says what to set."""
    if requested == "cuda" and not cuda_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available; set device: auto or cpu")
    if requested in ("cuda", "auto") and cuda_available():
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
