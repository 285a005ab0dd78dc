"""What a benchmark record says when nothing was measured. Without torch, so that the workflow's GPU benchmark job
on a machine without a GPU writes it in a fraction of a second."""

from __future__ import annotations

NO_CUDA = "not measured: no CUDA device"


def not_measured_record(reason: str, device_kind: str) -> dict:
    """The record written instead of measurements, e.g. for the GPU rule on a machine without CUDA."""
    return {"measured": False, "reason": reason, "device_kind": device_kind}
