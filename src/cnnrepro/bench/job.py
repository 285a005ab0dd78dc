"""The workflow's benchmark job: measure one trained model on the GPU or the CPU and write its record.

torch is imported only when something is measured. A GPU job on a machine that has no GPU at all (every CPU-only
machine, and every smoke run) writes its "not measured" record without it, in a fraction of a second instead of the
two CPU-seconds that importing torch costs; the record is the same either way.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Mapping

from cnnrepro.bench.record import NO_CUDA, not_measured_record
from cnnrepro.runtime.io import write_json

log = logging.getLogger(__name__)

# The device files a GPU driver creates and that CUDA (or ROCm, or WSL's CUDA) opens: with none of them, no
# process on this machine can see a GPU, whatever torch is installed.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def no_gpu_on_this_machine() -> bool:
    """True when this process certainly sees no CUDA device, decided without importing torch.

    ``CUDA_VISIBLE_DEVICES`` set to nothing hides every GPU; on Linux, a machine without the GPU drivers' device
    files has none. False means "maybe": torch then decides (``cnnrepro.runtime.device.cuda_available``).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return True
    return sys.platform == "linux" and not any(os.path.exists(path) for path in GPU_DEVICE_FILES)


def benchmark_job(key: Mapping[str, str], settings: dict, weights: str | Path, data: str | Path, kind: str,
                  bench_settings: dict, out: str | Path) -> dict:
    """Benchmark one trained run's model on the GPU or the CPU and write the record to ``out``. ``key`` names the
    benchmark (cnnrepro.config.BenchKey's fields: the rule's wildcards); ``settings`` are those of the run whose
    weights it measures."""
    ident = {**key, "weights_of_run": settings["run_id"]}
    record = None
    if kind != "gpu" or not no_gpu_on_this_machine():
        from cnnrepro.bench import trained  # deferred: torch, loaded only when something is measured

        record = trained.measure_job(settings, weights, data, kind, bench_settings)
    if record is None:
        record = not_measured_record(NO_CUDA, "gpu")
        log.info("GPU benchmark of %s not measured: no CUDA device", settings["run_id"])
    record.update(ident)
    write_json(out, record)
    return record
