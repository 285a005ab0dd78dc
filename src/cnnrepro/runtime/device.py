"""Which device a job runs on: one place that asks torch about CUDA."""

from __future__ import annotations

import os
import platform
import resource

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


def _read_int(path: str) -> int | None:
    try:
        text = open(path, encoding="ascii").read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _status_bytes(field: str) -> int | None:
    """A /proc/self/status field in bytes (VmData: what RLIMIT_DATA counts)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes), if any."""
    try:
        lines = open("/proc/self/cgroup", encoding="ascii").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            limit = _read_int(f"/sys/fs/cgroup{path}/memory.max")
            used = _read_int(f"/sys/fs/cgroup{path}/memory.current")
        elif "memory" in controllers.split(","):
            limit = _read_int(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
            used = _read_int(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        else:
            continue
        if limit is not None and used is not None and limit < 2**60:  # "max" or the v1 'unlimited' value
            return max(limit - used, 0)
    return None


def memory_budget(device: torch.device) -> int:
    """Bytes a job may give to data held on ``device``: half of what is free there. On the CPU, free means the
    least of the available memory, the room left under the process's data limit (RLIMIT_DATA, what ``ulimit -d``
    and some schedulers set) and under its cgroup's limit (SLURM's mem_mb)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    room = []
    available = None
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    room.append(available)
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    used = _status_bytes("VmData")
    if soft != resource.RLIM_INFINITY and used is not None:
        room.append(max(soft - used, 0))
    room.append(_cgroup_headroom())
    known = [r for r in room if r is not None]
    return min(known) // 2 if known else 2**62
