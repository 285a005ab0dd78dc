"""A trained run's model benchmarked as the workflow's job asks: the run's model with its weights, the paper's
test images at batch 1, the numerics it computed in, and every measurement of cnnrepro.bench.measure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from cnnrepro.bench.measure import run_benchmark
from cnnrepro.data.splits import batch_transform, read_verified
from cnnrepro.engine.recipe import build_run_model
from cnnrepro.runtime import device as devices

log = logging.getLogger(__name__)


def numerics(device: torch.device) -> dict:
    """What the benchmark computed in: fp32 (no autocast here) and the TF32/cuDNN flags in force."""
    cuda = device.type == "cuda"
    return {"precision": "fp32", "tf32_matmul": cuda and torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": cuda and torch.backends.cudnn.allow_tf32,
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None}


def load_trained_model(settings: dict, weights: str | Path) -> nn.Module:
    model = build_run_model(settings, pretrained=False)  # the trained weights replace everything
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


class PaperExamples:
    """The first ``count`` test images, each preprocessed as at evaluation when it is taken: what the authors
    timed at batch 1. Only the uint8 test set is held; a 224 px float copy of 10,000 images would be ~6 GiB."""

    def __init__(self, settings: dict, data: str | Path, count: int):
        compact = read_verified(data)
        self.images = compact["splits"]["test"]["x"][:count]
        self.transform = batch_transform(settings, torch.device("cpu"), augment_name="none", data=compact)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self.images)):
            yield self.transform(self.images[i:i + 1], None, False)

    @property
    def shape_chw(self) -> tuple[int, ...]:
        return tuple(next(iter(self)).shape[1:])


def measure_job(settings: dict, weights: str | Path, data: str | Path, kind: str, bench_settings: dict) -> dict | None:
    """Every measurement of one trained run's model on the GPU or the CPU; None for the GPU without a CUDA device.

    The workflow's job (``cnnrepro.bench.job.benchmark_job``) adds the run's fields and writes the record.
    """
    if kind == "gpu" and not devices.cuda_available():
        return None
    if kind == "gpu":
        # As in training: TF32 only when the speed block asks for it (torch's own default allows it in cuDNN).
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(settings["speed"]["tf32"])
    model = load_trained_model(settings, weights)
    inputs = PaperExamples(settings, data, bench_settings["paper_runs"])
    options = {**bench_settings, "num_threads": bench_settings["cpu_threads"] if kind == "cpu" else None}
    log.info("benchmarking %s on %s with %d paper-style examples", settings["run_id"], kind, len(inputs))
    record = run_benchmark(model, inputs.shape_chw, kind, options, paper_inputs=inputs,
                           data_parallel=settings["latency_data_parallel"])
    log.info("median latency %.3f ms (correct), mean %.3f ms (paper-faithful)",
             record["latency_correct"]["median_ms"], record["latency_paper"]["mean_ms"])
    record["numerics"] = numerics(torch.device("cuda", 0) if kind == "gpu" else torch.device("cpu"))
    return record
