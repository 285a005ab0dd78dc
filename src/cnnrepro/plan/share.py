"""Small runs sharing a GPU (config ``gpu_share``): which runs share one, and how long a configuration's runs take on
one or more GPUs when some do.

A training run shares when ``gpu_share`` k > 1, it trains on a GPU, and its planned device memory
(:func:`cnnrepro.plan.memory.device_bytes`) with a CUDA context fits k times into the GPU's memory
(``gpu_memory_gib``), with headroom. Larger runs, and the GPU benchmarks (whose latencies nothing may disturb), hold
a GPU alone. The workflow asks for the GPU accordingly (workflow/rules/engine.smk) and cnnrepro.runtime.gpu_slots
hands it out.

The wall clock (:func:`wall_seconds`) places the runs as the slots do: the head of the longest chain of runs first,
each on the lowest-numbered GPU it fits (alone: an idle GPU; sharing: one with fewer than k sharers and no job alone).
Runs sharing a GPU overlap what each spends starting up and launching kernels, since each process launches its own;
their arithmetic (FLOPs / sustained rate) has the one GPU, so when it needs more than the GPU has, each sharer slows
in proportion. This is an assumption, not a measurement: it takes the GPU's switching between processes as free and
assumes CPU cores for every job placed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from cnnrepro.plan.rates import DEVICES, Rate
from cnnrepro.plan.runs import RunPlan

# What a process's CUDA context and torch's kernels hold on a GPU before any tensor (0.3-0.6 GiB on recent GPUs).
CUDA_CONTEXT_BYTES = 512 * 2**20
# The share of a GPU's memory that sharing runs may plan to fill: the rest covers the caching allocator's
# fragmentation and the error of the plan's estimate.
MEMORY_HEADROOM = 0.9
# What a sharing run asks SLURM for: one shard of a GPU (gres/shard; profiles/README.md), instead of --gpus=1.
SLURM_SHARD = "shard:1"


def gpu_memory_gib(config: dict) -> float:
    """The memory of one GPU that decides which runs share: ``gpu_memory_gib``, else the smallest GPU planned for."""
    return config["gpu_memory_gib"] or min(device.memory_gib for device in DEVICES.values())


def share_budget_bytes(config: dict) -> float:
    """The most device memory one sharing run may hold, its CUDA context included."""
    return MEMORY_HEADROOM * gpu_memory_gib(config) * 2**30 / config["gpu_share"]


def shares_gpu(config: dict, settings: dict, device_bytes: int) -> bool:
    """Whether a training run with these settings and planned device memory shares a GPU with other small runs."""
    return (config["gpu_share"] > 1 and settings["device"] != "cpu"
            and device_bytes + CUDA_CONTEXT_BYTES <= share_budget_bytes(config))


# ---------------------------------------------------------------------------------------------------------------------
# the wall clock on n GPUs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuJob:
    """A training job as the wall clock sees it."""

    name: str
    seconds: float  # alone on a GPU
    gpu_seconds: float  # of which the GPU computes: what sharers of one GPU cannot overlap
    shares: bool
    after: str | None = None  # the job it continues (epoch grid chaining): it starts when that one has ended


def gpu_jobs(plans: Iterable[RunPlan], rate: Rate, sharing: set[str]) -> list[GpuJob]:
    """The training jobs of ``plans`` on a GPU of ``rate``; those in ``sharing`` share one."""
    return [GpuJob(p.run_id, p.seconds(rate), p.flops / rate.flops_per_second, p.run_id in sharing, p.chained_from)
            for p in plans]


def _chain_seconds(jobs: list[GpuJob], after: dict[str, str | None]) -> dict[str, float]:
    """Each job's seconds plus those of the longest chain of jobs continuing it."""
    by_name = {job.name: job for job in jobs}
    followers: dict[str, list[str]] = {}
    for name, before in after.items():
        if before is not None:
            followers.setdefault(before, []).append(name)
    out: dict[str, float] = {}

    def chain(name: str) -> float:
        if name not in out:
            out[name] = by_name[name].seconds + max((chain(f) for f in followers.get(name, [])), default=0.0)
        return out[name]

    for job in jobs:
        chain(job.name)
    return out


def _place(job: GpuJob, placed: list[list[GpuJob]], share: int) -> int | None:
    """The GPU a job takes now, as cnnrepro.runtime.gpu_slots picks it, or None when none has room."""
    for gpu, running in enumerate(placed):
        if not running or (job.shares and len(running) < share and all(other.shares for other in running)):
            return gpu
    return None


def _speed(running: list[GpuJob]) -> float:
    """How fast each job on one GPU progresses (1: as alone): their arithmetic shares the GPU."""
    demand = sum(job.gpu_seconds / job.seconds for job in running if job.seconds)
    return 1.0 / max(1.0, demand)


def wall_seconds(jobs: list[GpuJob], gpus: int, share: int) -> float:
    """Seconds until every job has run on ``gpus`` GPUs, up to ``share`` sharing jobs on one at a time."""
    names = {job.name for job in jobs}
    after = {job.name: job.after if job.after in names else None for job in jobs}
    longest = _chain_seconds(jobs, after)
    waiting = sorted(jobs, key=lambda job: (-longest[job.name], job.name))
    left = {job.name: job.seconds for job in jobs}
    placed: list[list[GpuJob]] = [[] for _ in range(gpus)]
    done: set[str] = set()
    clock = 0.0
    while waiting or any(placed):
        for job in [job for job in waiting if after[job.name] is None or after[job.name] in done]:
            gpu = _place(job, placed, share)
            if gpu is not None:
                placed[gpu].append(job)
                waiting.remove(job)
        speeds = {job.name: _speed(running) for running in placed for job in running}
        step = min(left[name] / speed for name, speed in speeds.items())
        clock += step
        for running in placed:
            for job in list(running):
                left[job.name] -= step * speeds[job.name]
                if left[job.name] <= 1e-6:
                    running.remove(job)
                    done.add(job.name)
    return clock
