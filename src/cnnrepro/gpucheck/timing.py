"""Milliseconds per training step: one representative run per (study, model, freeze level), at its study's batch
size and input size, built as a run builds it (freeze level applied), stepped with the engine's optimizer and loss,
in the faithful setting and under each speed switch that applies on the device; and its peak device memory.

What is timed is the model's step alone (forward, loss, backward, optimizer) on a random batch already on the
device, not the epoch's bookkeeping around it. Device-specific calls (synchronisation, memory statistics) take the
device and do nothing on the CPU, so the whole sweep runs, and is tested, without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from cnnrepro import config as cfg
from cnnrepro import models
from cnnrepro.engine.recipe import (
    SPEED_SWITCHES,
    autocast,
    build_run_model,
    deterministic_algorithms,
    effective_speed,
    make_loss,
    make_optimizer,
    set_backend_flags,
    to_format,
)
from cnnrepro.gpucheck.profiles import MIN_SAMPLES, Profile
from cnnrepro.plan.cost import image_size, settings_cost, stages
from cnnrepro.plan.runs import train_step_cost

# The setting that presets/fast.yaml's switches make together (read from the preset: it is the one place they are).
FAST_PRESET = "presets/fast.yaml"
FAITHFUL = {key: False for key in SPEED_SWITCHES}
# What torch.compile adds to a measurement's time before its first step, for the budget (its warm-up compiles).
COMPILE_SECONDS = 60.0


# ---------------------------------------------------------------------------------------------------------------------
# the device seams
# ---------------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU has nothing queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes, how they were measured): the allocator's peak since the last reset on CUDA; None on the CPU, whose
    process-wide resident size says nothing about one model."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return None, "not measured on the CPU"


def release_memory(device: torch.device, compiled: bool) -> None:
    """Free what a measurement left: its tensors, the allocator's cache, torch.compile's graphs (which would also
    count against its recompilation limit for the next model of the same class)."""
    if compiled:
        torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def backend_flags(switches: dict, device: torch.device) -> Iterator[None]:
    """The numerics a run sets for these switches (deterministic algorithms, TF32, cuDNN autotuning), restored
    afterwards."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    deterministic_algorithms(device)
    set_backend_flags(switches, device)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = \
            saved[:3]
        torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])


# ---------------------------------------------------------------------------------------------------------------------
# what is timed
# ---------------------------------------------------------------------------------------------------------------------


def representative_runs(settings_by_run: dict[str, dict], profile: Profile) -> list[dict]:
    """The first run of each (study, model, freeze level), or for the CPU profile the cheapest of each freeze level
    (FLOPs per image), with the profile's batch cap applied."""
    firsts: dict[tuple, dict] = {}
    for settings in settings_by_run.values():
        firsts.setdefault((settings["study"], settings["model"], settings["freeze"]), settings)
    chosen = list(firsts.values())
    if profile.timing_runs == "cheapest_per_freeze":
        cheapest: dict[str, dict] = {}
        for settings in sorted(chosen, key=lambda s: settings_cost(s).flops):
            cheapest.setdefault(settings["freeze"], settings)
        chosen = list(cheapest.values())
    out = []
    for settings in chosen:
        settings = copy.deepcopy(settings)
        if profile.batch_cap:
            settings["recipe"]["batch_size"] = min(settings["recipe"]["batch_size"], profile.batch_cap)
        out.append(settings)
    return out


def has_conv(settings: dict) -> bool:
    model = build_run_model(settings, meta=True)
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def setting_switches(fast: dict) -> dict[str, dict]:
    """Each timed setting's requested switches: faithful (none), each switch alone, presets/fast.yaml's (``fast``)
    together, torch.compile."""
    singles = {key: {**FAITHFUL, key: True} for key in SPEED_SWITCHES if key != "compile"}
    return {"faithful": FAITHFUL, **singles, "fast": {**FAITHFUL, **fast}, "compile": {**FAITHFUL, "compile": True}}


def fast_speed() -> dict:
    return cfg.load_yaml(cfg.REPO_ROOT / FAST_PRESET)["speed"]


def in_effect(requested: dict, device: torch.device, conv: bool, optimizer: str) -> dict:
    """The switches that apply to this model and its ``optimizer`` on this device
    (cnnrepro.engine.recipe.effective_speed)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    used = effective_speed(requested, device.type, conv, capability, optimizer)
    return {key: used[key] for key in SPEED_SWITCHES}


def step_cost(settings: dict) -> tuple[int, int]:
    """(FLOPs, ops) of one training step as the plan counts it (cnnrepro.plan.runs), the whole model run."""
    cost = settings_cost(settings)
    per_image, ops = train_step_cost(cost, stages(settings, cost), cached=False)
    return per_image * settings["recipe"]["batch_size"], ops


def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, criterion,
               switches: dict, device: torch.device) -> None:
    """One optimizer step as the engine takes it (cnnrepro.engine.train.train_one_epoch), without the epoch's
    bookkeeping."""
    with autocast(device, switches["amp_bf16"]):
        loss = criterion(net(to_format(x, switches["channels_last"])), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _sample_ms(step: Callable[[], None], device: torch.device, profile: Profile) -> list[float]:
    """Milliseconds per step of each timed sample (steps_per_sample steps between two synchronisations)."""
    for _ in range(profile.warmup_steps):
        step()
    synchronize(device)
    samples: list[float] = []
    window = time.perf_counter()
    while len(samples) < profile.timed_samples and (
            len(samples) < MIN_SAMPLES or time.perf_counter() - window < profile.timed_seconds):
        start = time.perf_counter()
        for _ in range(profile.steps_per_sample):
            step()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3 / profile.steps_per_sample)
    return samples


def time_steps(settings: dict, switches: dict, device: torch.device, profile: Profile) -> dict:
    """Milliseconds per optimizer step (median, interquartile range, min, max) and the peak device memory of one
    run's model under ``switches`` (the ones in effect)."""
    recipe, batch, size = settings["recipe"], settings["recipe"]["batch_size"], image_size(settings)
    torch.manual_seed(0)
    model = build_run_model(settings, pretrained=False)  # speed does not depend on the weights' values
    model = model.to(device, memory_format=torch.channels_last if switches["channels_last"] else torch.preserve_format)
    model.train()
    models.set_bn_mode(model, recipe["bn_frozen"])
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], recipe, switches["fused_optimizer"])
    criterion = make_loss(recipe["loss"], settings["num_classes"])
    net = torch.compile(model) if switches["compile"] else model
    x = torch.randn(batch, settings["in_channels"], size, size, device=device)
    y = torch.randint(settings["num_classes"], (batch,), device=device)
    with backend_flags(switches, device):
        reset_peak_memory(device)
        samples = _sample_ms(lambda: train_step(net, x, y, optimizer, criterion, switches, device), device, profile)
        peak, peak_kind = peak_memory(device)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"ms_median": statistics.median(samples), "ms_iqr": q3 - q1, "ms_min": min(samples),
            "ms_max": max(samples), "samples": len(samples), "steps_timed": len(samples) * profile.steps_per_sample,
            "warmup_steps": profile.warmup_steps, "peak_memory_bytes": peak, "peak_memory_kind": peak_kind}


# ---------------------------------------------------------------------------------------------------------------------
# the sweep, within the budget
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """What the sweep measured, skipped and found not to apply."""

    entries: list
    skipped: list
    not_applicable: list


def _entry(settings: dict, setting: str, switches: dict, conv: bool) -> dict:
    flops, ops = step_cost(settings)
    return {"run_id": settings["run_id"], "study": settings["study"], "model": settings["model"],
            "freeze": settings["freeze"], "dataset": settings["dataset"],
            "batch_size": settings["recipe"]["batch_size"], "input_size": image_size(settings),
            "num_classes": settings["num_classes"], "setting": setting,
            "switches": sorted(key for key, on in switches.items() if on), "has_conv": conv,
            "flops_per_step": flops, "ops_per_step": ops}


def _plan_measurements(runs: list[dict], device: torch.device, profile: Profile, sweep: Sweep) -> list[tuple]:
    """(settings, setting name, switches in effect, has_conv) in the order they are timed: every run faithful
    first, then each switch alone, then presets/fast.yaml's together, then torch.compile (the slowest to
    measure). A setting that changes nothing on this device, or repeats one already timed, is listed instead."""
    conv = {settings["run_id"]: has_conv(settings) for settings in runs}
    planned: dict[str, list[dict]] = {settings["run_id"]: [] for settings in runs}
    order = []
    for setting, requested in setting_switches(fast_speed()).items():
        for settings in runs:
            run_id = settings["run_id"]
            switches = in_effect(requested, device, conv[run_id], settings["recipe"]["optimizer"])
            if setting in profile.left_out:
                sweep.skipped.append({"run_id": run_id, "setting": setting, "reason": profile.left_out[setting]})
            elif switches in planned[run_id]:
                sweep.not_applicable.append({"run_id": run_id, "setting": setting})
            else:
                planned[run_id].append(switches)
                order.append((settings, setting, switches, conv[run_id]))
    return order


def sweep(runs: list[dict], device: torch.device, profile: Profile, deadline: float,
          progress: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> Sweep:
    """Time every run in every setting that applies until ``deadline`` (a ``clock`` reading): a measurement that
    would end after it is skipped, and the sweep says so."""
    result = Sweep([], [], [])
    took: dict[str, float] = {}  # run -> seconds its last measurement took (what the next one is expected to take)
    for settings, setting, switches, conv in _plan_measurements(runs, device, profile, result):
        run_id = settings["run_id"]
        expected = took.get(run_id, 5.0) + (COMPILE_SECONDS if switches["compile"] else 0.0)
        left = deadline - clock()
        if expected > left:
            result.skipped.append({"run_id": run_id, "setting": setting,
                                   "reason": f"over the budget: {max(left, 0):.0f} s left, about {expected:.0f} s "
                                             "needed"})
            continue
        entry = _entry(settings, setting, switches, conv)
        start = clock()
        try:
            entry.update(time_steps(settings, switches, device, profile), error=None)
        except Exception as error:  # one model or switch failing must not end the sweep: it is recorded
            entry.update(ms_median=None, error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
        finally:
            release_memory(device, switches["compile"])
        entry["seconds"] = took[run_id] = clock() - start
        result.entries.append(entry)
        shown = f"{entry['ms_median']:.2f} ms/step" if entry["ms_median"] is not None else entry["error"]
        progress(f"step_times: {run_id} [{setting}] batch {entry['batch_size']}: {shown}")
    return result
