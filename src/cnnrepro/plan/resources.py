"""How long a job asks its scheduler for (``runtime``): the plan's estimate on a reference device times a safety
factor. A GPU job is estimated on the slowest GPU the plan knows (T4, so the limit holds on any of them), a CPU
job at the reference CPU rate. A job that still runs out of time is requeued by the cluster profile's retry and
resumes from its last epoch checkpoint, so a short limit costs time, not work. (Memory: cnnrepro.plan.memory.)
"""

from __future__ import annotations

import math

from cnnrepro.plan.cost import settings_cost
from cnnrepro.plan.rates import JOB_STARTUP_SECONDS, Pass, Rate, gpu_rate, reference_cpu_rate

RUNTIME_SAFETY = 2.0  # time: the estimate is rough (see cnnrepro.plan), and too short a limit kills the job
MIN_RUNTIME_MIN = 10
REFERENCE_GPU = "t4"  # the slowest GPU in cnnrepro.plan.rates.DEVICES


def reference_rate(settings: dict, threads: int) -> Rate:
    """The device a job's runtime request is estimated on: the reference CPU for CPU jobs, else the T4."""
    if settings["device"] == "cpu":
        return reference_cpu_rate(threads)
    return gpu_rate(REFERENCE_GPU, settings["speed"])


def runtime_min(seconds: float) -> int:
    """A runtime request in minutes: the estimate times the safety factor, at least MIN_RUNTIME_MIN."""
    return max(MIN_RUNTIME_MIN, math.ceil(RUNTIME_SAFETY * seconds / 60))


def train_runtime_min(run_plan, settings: dict, threads: int) -> int:
    """A training job's runtime request from its plan (cnnrepro.plan.runs.plan_runs, the config's own savings)."""
    return runtime_min(run_plan.seconds(reference_rate(settings, threads)))


def bench_seconds(settings: dict, bench: dict, kind: str, rate) -> float:
    """A benchmark job: every latency and throughput forward pass it makes, one image or one batch each."""
    cost = settings_cost(settings)
    batch_one = bench["paper_runs"] + bench["warmup"] + bench["runs"]
    passes = [Pass("latency", batch_one, 1, cost.flops, cost.ops)]
    for size in bench["batch_sizes"]:
        calls = bench["warmup"] + bench["runs"] + bench["throughput_runs"]
        passes.append(Pass(f"batch {size}", calls * size, size, cost.flops, cost.ops))
    return JOB_STARTUP_SECONDS + sum(p.seconds(rate) for p in passes)


def bench_runtime_min(settings: dict, bench: dict, kind: str) -> int:
    """A benchmark job's runtime request: its passes on the reference GPU (gpu) or CPU (cpu), with the margin."""
    rate = (reference_cpu_rate(bench["cpu_threads"]) if kind == "cpu" or settings["device"] == "cpu"
            else gpu_rate(REFERENCE_GPU, settings["speed"]))
    return runtime_min(bench_seconds(settings, bench, kind, rate))
