"""What a job asks its scheduler for (``mem_mb``, ``runtime``): formulas over what the job holds and computes.

Memory grows with what matters: the dataset held in memory (times an expansion such as seed 003's 10 copies),
the model with its gradients and optimizer state, and, when the job computes on the CPU, one batch's activations
as counted on the meta device (:mod:`cnnrepro.plan`). Each run's measured peak is in its metrics.json
(``peak_memory_bytes``) to check them against.

Runtime is the plan's estimate (:mod:`cnnrepro.plan`) on a reference device times a safety factor: a GPU job is
estimated on the slowest GPU the plan knows (T4, so the limit holds on any of them), a CPU job at the reference
CPU rate. A job that still runs out of time is requeued by the cluster profile's retry and resumes from its last
epoch checkpoint, so a short limit costs time, not work.
"""

from __future__ import annotations

import math

RUNTIME_MB = 1500  # Python, torch and its kernels, before any data
SAFETY = 1.5  # memory
RUNTIME_SAFETY = 2.0  # time: the estimate is rough (see cnnrepro.plan), and too short a limit kills the job
MIN_RUNTIME_MIN = 10
REFERENCE_GPU = "t4"  # the slowest GPU in cnnrepro.plan.DEVICES


def dataset_bytes(dataset: str, data_settings: dict) -> int:
    """Bytes of the compact uint8 dataset (both splits) as the data settings make it."""
    from cnnrepro.datasets import DATASETS
    from cnnrepro.plan import split_counts

    info = DATASETS[dataset]
    return sum(split_counts(dataset, data_settings).values()) * info.channels * info.size * info.size


def _model_bytes(settings: dict, copies: int) -> int:
    from cnnrepro.plan import settings_cost

    return 4 * copies * settings_cost(settings).params


def train_mem_mb(settings: dict, data_settings: dict) -> int:
    """A training job: the dataset (expanded), weights + gradients + two optimizer moments, and, when it trains
    on the CPU, one batch's activations (on a GPU they are in GPU memory, which mem_mb does not cover)."""
    from cnnrepro.augment import AUGMENTATIONS
    from cnnrepro.plan import activation_bytes

    # A fixed expansion holds the originals and their copies while it is made.
    expands = AUGMENTATIONS[settings["augment"]].copies
    data = dataset_bytes(settings["dataset"], data_settings) * (1 + settings["augment_copies"] if expands else 1)
    activations = activation_bytes(settings) if settings["device"] == "cpu" else 0
    return math.ceil(SAFETY * (RUNTIME_MB + (data + _model_bytes(settings, 4) + activations) / 2**20))


def bench_mem_mb(settings: dict, data_settings: dict, bench: dict) -> int:
    """A benchmark job: the uint8 test set, the model twice (a saved copy is measured), the largest batch's
    forward pass (two of its largest op outputs alive at once)."""
    from cnnrepro.plan import settings_cost

    data = dataset_bytes(settings["dataset"], data_settings)
    activations = 2 * max(bench["batch_sizes"]) * settings_cost(settings).max_output_bytes
    return math.ceil(SAFETY * (RUNTIME_MB + (data + _model_bytes(settings, 2) + activations) / 2**20))


def prepare_mem_mb(dataset: str, data_settings: dict) -> int:
    """Preparing a dataset: the source arrays and the compact copy, a few times over while converting."""
    return math.ceil(SAFETY * (RUNTIME_MB + 4 * dataset_bytes(dataset, data_settings) / 2**20))


def reference_rate(settings: dict, threads: int):
    """The device a job's runtime request is estimated on: the reference CPU for CPU jobs, else the T4."""
    from cnnrepro import plan

    if settings["device"] == "cpu":
        return plan.reference_cpu_rate(threads)
    return plan.gpu_rate(REFERENCE_GPU, settings["speed"])


def runtime_min(seconds: float) -> int:
    """A runtime request in minutes: the estimate times the safety factor, at least MIN_RUNTIME_MIN."""
    return max(MIN_RUNTIME_MIN, math.ceil(RUNTIME_SAFETY * seconds / 60))


def train_runtime_min(run_plan, settings: dict, threads: int) -> int:
    """A training job's runtime request from its plan (cnnrepro.plan.plan_runs, the config's own savings)."""
    return runtime_min(run_plan.seconds(reference_rate(settings, threads)))


def bench_seconds(settings: dict, bench: dict, kind: str, rate) -> float:
    """A benchmark job: every latency and throughput forward pass it makes, one image or one batch each."""
    from cnnrepro.plan import JOB_STARTUP_SECONDS, Pass, settings_cost

    cost = settings_cost(settings)
    batch_one = bench["paper_runs"] + bench["warmup"] + bench["runs"]
    passes = [Pass("latency", batch_one, 1, cost.flops, cost.ops)]
    for size in bench["batch_sizes"]:
        calls = bench["warmup"] + bench["runs"] + bench["throughput_runs"]
        passes.append(Pass(f"batch {size}", calls * size, size, cost.flops, cost.ops))
    return JOB_STARTUP_SECONDS + sum(p.seconds(rate) for p in passes)


def bench_runtime_min(settings: dict, bench: dict, kind: str) -> int:
    """A benchmark job's runtime request: its passes on the reference GPU (gpu) or CPU (cpu), with the margin."""
    from cnnrepro import plan

    rate = (plan.reference_cpu_rate(bench["cpu_threads"]) if kind == "cpu" or settings["device"] == "cpu"
            else plan.gpu_rate(REFERENCE_GPU, settings["speed"]))
    return runtime_min(bench_seconds(settings, bench, kind, rate))
