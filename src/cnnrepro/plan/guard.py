"""The slow-run guard: a local run without a GPU that would take days stops before any job, saying how long it
would take and the ways on."""

from __future__ import annotations

from typing import Iterable

from cnnrepro.plan.rates import Rate, calibrate_cpu, reference_cpu_rate
from cnnrepro.plan.runs import RunPlan

# A local CPU-only run estimated above this stops at start-up unless allow_slow is set.
SLOW_RUN_HOURS = 6.0
# Bounds that settle most configurations without measuring: at this many times the reference rate a run that is
# still too slow is too slow anywhere; at the reference rate one that is fast enough is fast enough.
OPTIMISTIC_CPU_FACTOR = 4.0


def local_cpu_hours(plans: Iterable[RunPlan], rate: Rate, parallel: int) -> float:
    """Wall hours of ``plans`` on the CPU with ``parallel`` training jobs at once."""
    return sum(p.seconds(rate) for p in plans) / max(1, parallel) / 3600


def slow_run_message(config: dict, plans: list[RunPlan], cores: int | None, gpus: int,
                     calibrate=calibrate_cpu) -> str | None:
    """Why a local run of ``plans`` (the training jobs still to run) must not start, or None when it may: it
    trains on the CPU (device cpu, or no GPU visible) and its estimate exceeds SLOW_RUN_HOURS. The CPU is
    measured (``calibrate``, a few seconds) only when the reference bounds do not settle it."""
    if config.get("allow_slow") or not plans or (gpus > 0 and config["device"] != "cpu"):
        return None
    threads = config["train_threads"]
    parallel = max(1, (cores or 1) // threads)
    reference = reference_cpu_rate(threads)
    if local_cpu_hours(plans, reference, parallel) <= SLOW_RUN_HOURS:
        return None
    fast = Rate("cpu", reference.label, reference.flops_per_second * OPTIMISTIC_CPU_FACTOR,
                reference.seconds_per_op / OPTIMISTIC_CPU_FACTOR, reference.basis)
    rate = reference if local_cpu_hours(plans, fast, parallel) > SLOW_RUN_HOURS else calibrate(threads)
    hours = local_cpu_hours(plans, rate, parallel)
    if hours <= SLOW_RUN_HOURS:
        return None
    why = "device: cpu" if config["device"] == "cpu" else "no GPU is visible on this machine"
    longest = max(plans, key=lambda p: p.seconds(rate))
    return (f"This local run would train {len(plans)} run(s) on the CPU ({why}): about {hours:.0f} hours "
            f"({sum(p.flops for p in plans) / 1e15:.1f} PFLOP at {rate.flops_per_second / 1e9:.0f} GFLOP/s, "
            f"{parallel} job(s) at once; the longest, {longest.run_id}, about "
            f"{longest.seconds(rate) / 3600:.0f} h), over the {SLOW_RUN_HOURS:g} h that a local run starts without "
            "asking. Stopped before any job. To proceed: run it where there is a GPU, or on a cluster "
            "(snakemake --workflow-profile profiles/slurm); or take a preset (--configfile presets/quick.yaml: "
            "real data, subsampled, 3 epochs; presets/smoke.yaml: minutes); or start it anyway with "
            "--config allow_slow=true. `cnnrepro plan --device cpu` estimates every run.")
