"""The plan from measured step times: what ``cnnrepro gpu-check`` wrote replaces the assumed GPU efficiency and per-op
cost (cnnrepro.plan.rates) with the training steps it timed on a real device.

Each run's time then has one of these bases (the plan's ``basis`` column):

* ``measured``: gpu-check timed this run's own training step (the same model, freeze level, batch size, input size
  and classes, with the speed switches the configuration uses): each training step takes the measured median, and the
  device memory is the measured peak (weights, gradients, optimizer state, one batch's activations) plus the data;
* ``scaled``: its model and freeze level were timed at another batch size or class count: the measurement times the
  ratio of the two steps' estimates at the fitted rate;
* ``fitted``: its model was not timed, or its prefix is cached (gpu-check times the whole step): the rate fitted to
  every timed step, i.e. ``max(FLOPs / R, ops x c)`` per step with R and c from :func:`fit_rate`.

Evaluation passes use the fitted rate in every case; the start-up per job stays assumed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cnnrepro import config as cfg
from cnnrepro.engine.recipe import SPEED_SWITCHES, effective_speed
from cnnrepro.plan.memory import device_data_bytes
from cnnrepro.plan.rates import DEVICES, Rate, step_time
from cnnrepro.plan.runs import RunPlan
from cnnrepro.runtime import io

# The gpu-check file: its format (bumped when a field the plan reads changes) and its name in the check's folder.
FORMAT = 1
FILE_NAME = "gpu-check.json"
BASES = ("assumed", "measured", "scaled", "fitted")
BASIS_LEGEND = ("basis: measured = gpu-check timed this run's training step; scaled = its model was timed at another "
                "batch size or class count; fitted = its model was not timed (or its prefix is cached): the fitted "
                "rate; evaluation passes use the fitted rate, start-up stays assumed")


class CalibrationError(ValueError):
    """A gpu-check file the plan cannot use; the message names the field and what to do."""


@dataclass(frozen=True)
class StepTime:
    """One timed training step of a gpu-check file."""

    run_id: str
    model: str
    freeze: str
    batch_size: int
    switches: frozenset  # the speed switches in effect while it was timed
    has_conv: bool
    seconds: float  # the median
    flops_per_step: int
    ops_per_step: int
    peak_memory_bytes: int | None


@dataclass(frozen=True)
class Calibration:
    """A gpu-check file, read and checked against the device the plan is for."""

    path: str
    created: str
    device: str  # the plan's device key (h100, a100, t4, cpu)
    kind: str  # cuda | cpu
    label: str  # the measured device's name
    capability: tuple[int, int] | None
    memory_gib: float | None
    passed: bool
    steps: tuple[StepTime, ...]


def device_key(kind: str, name: str) -> str | None:
    """The plan's device that a measured device is (its name contains the key as a word), None when none is."""
    if kind == "cpu":
        return "cpu"
    return next((key for key in DEVICES if re.search(rf"\b{key}\b", name, re.IGNORECASE)), None)


def _step(entry: dict, where: str) -> StepTime | None:
    if entry.get("ms_median") is None:  # skipped or failed: nothing measured
        return None
    seconds = entry["ms_median"] / 1e3
    if not (seconds > 0 and entry["ops_per_step"] > 0 and entry["flops_per_step"] > 0):
        raise CalibrationError(f"{where}: ms_median, flops_per_step and ops_per_step must be positive; run "
                               "cnnrepro gpu-check again")
    return StepTime(entry["run_id"], entry["model"], entry["freeze"], entry["batch_size"],
                    frozenset(entry["switches"]), entry["has_conv"], seconds, entry["flops_per_step"],
                    entry["ops_per_step"], entry.get("peak_memory_bytes"))


def load(path: str | Path, device: str) -> Calibration:
    """Read a gpu-check file for a plan on ``device``; a CalibrationError naming the field when it does not fit."""
    try:
        return _load(path, io.read_json(path), device)
    except KeyError as error:
        raise CalibrationError(f"{path}: no field {error}: not a gpu-check file of format {FORMAT}; run cnnrepro "
                               "gpu-check again") from None


def _load(path: str | Path, record: dict, device: str) -> Calibration:
    if record.get("format") != FORMAT:
        raise CalibrationError(f"{path}: its field 'format' is {record.get('format')!r}, but this cnnrepro reads "
                               f"gpu-check files of format {FORMAT}: run cnnrepro gpu-check again with this version")
    measured = record["device"]
    key = device_key(measured["kind"], measured["name"])
    if key != device:
        fix = (f"plan with --device {key}" if key else
               f"none of the plan's devices ({', '.join(DEVICES)}, cpu) is this one: add it to "
               "cnnrepro.plan.rates.DEVICES")
        raise CalibrationError(f"{path}: its field 'device.name' says it measured {measured['name']!r} "
                               f"({measured['kind']}), but --device is {device}: {fix}, or pass a gpu-check file "
                               f"measured on the {device} device")
    steps = tuple(step for k, entry in enumerate(record["step_times"])
                  if (step := _step(entry, f"{path}: step_times[{k}]")) is not None)
    capability = tuple(int(v) for v in measured["capability"].split(".")) if measured.get("capability") else None
    memory = measured.get("memory_bytes")
    return Calibration(str(path), record["created"], key, measured["kind"], measured["name"], capability,
                       memory / 2**30 if memory else None, bool(record["passed"]), steps)


# ---------------------------------------------------------------------------------------------------------------------
# the fitted rate
# ---------------------------------------------------------------------------------------------------------------------


def _log_error(u: float, v: float, points: list[tuple[float, float, float]]) -> float:
    """Squared log error of max(F / R, O x c) with u = log R, v = log c; points are (log F, log O, log t)."""
    return sum((t - max(f - u, o + v)) ** 2 for f, o, t in points)


def _candidates(points: list[tuple[float, float, float]], assumed: tuple[float, float]) -> list[tuple[float, float]]:
    """The least-squares (u, v) for each way of splitting the steps into arithmetic-bound and launch-bound ones.

    A step is bound by arithmetic when u + v <= log(F / O), so each interval of u + v between those values fixes
    the split, and the error is then a sum of two separate squares, least at the means (moved onto the interval's
    edge when they fall outside it). Where no step is bound by launches, the steps only bound c from above: c is
    the assumed one, or that bound if lower; likewise R where no step is bound by arithmetic."""
    ratios = sorted({f - o for f, o, _ in points})
    edges = [-math.inf, *ratios, math.inf]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        arithmetic = [f - t for f, o, t in points if f - o >= hi]  # log(F / t): each step's own R
        launches = [t - o for f, o, t in points if f - o <= lo]  # log(t / O): each step's own c
        if not launches:
            u = sum(arithmetic) / len(arithmetic)
            out.append((u, min(assumed[1], hi - u)))
        elif not arithmetic:
            v = sum(launches) / len(launches)
            out.append((max(assumed[0], lo - v), v))
        else:
            u, v = sum(arithmetic) / len(arithmetic), sum(launches) / len(launches)
            total = min(max(u + v, lo), hi)  # the split holds only inside the interval
            a, b = len(arithmetic), len(launches)
            out.append((u + (total - u - v) * b / (a + b), v + (total - u - v) * a / (a + b)))
    return out


def fit_rate(points: list[tuple[float, int, float]], assumed: Rate) -> tuple[float, float]:
    """(FLOP/s, seconds per op) that fit timed steps ``(flops, ops, seconds)`` under the plan's model of a step,
    ``max(flops / R, ops x c)``: the least squared log error over all steps (see :func:`_candidates`), the
    ``assumed`` rate only where the steps leave R or c open. Doubling every time halves R and doubles c whenever
    some step is bound by arithmetic and some by launches."""
    logs = [(math.log(f), math.log(o), math.log(t)) for f, o, t in points]
    prior = (math.log(assumed.flops_per_second), math.log(assumed.seconds_per_op))
    u, v = min(_candidates(logs, prior), key=lambda uv: round(_log_error(*uv, logs), 12))
    return math.exp(u), math.exp(v)


# ---------------------------------------------------------------------------------------------------------------------
# the plan's runs, measured
# ---------------------------------------------------------------------------------------------------------------------


def switches_in_effect(speed: dict, calibration: Calibration, has_conv: bool) -> frozenset:
    """The speed switches a run of this configuration uses on the measured device."""
    used = effective_speed(speed, calibration.kind, has_conv, calibration.capability)
    return frozenset(key for key in SPEED_SWITCHES if used[key])


@dataclass(frozen=True)
class Measured:
    """The steps of a calibration that a configuration's switches select, and the rate fitted to them."""

    calibration: Calibration
    rate: Rate
    steps: tuple[StepTime, ...]

    def step_for(self, model: str, freeze: str, batch: int, flops: int, ops: int) -> tuple[StepTime | None, bool]:
        """The timed step of (model, freeze) to use for a run's step, and whether it is that very step."""
        mine = [s for s in self.steps if (s.model, s.freeze) == (model, freeze)]
        exact = [s for s in mine if (s.batch_size, s.flops_per_step, s.ops_per_step) == (batch, flops, ops)]
        same_batch = [s for s in mine if s.batch_size == batch]
        chosen = (exact or same_batch or mine or [None])[0]
        return chosen, bool(exact)

    def apply(self, plan: RunPlan, settings: dict, data_settings: dict) -> RunPlan:
        """``plan`` with its training passes timed as measured (or scaled), and its basis."""
        train = next(p for p in plan.passes if p.what == "train")
        step_flops = train.batch * train.flops_per_image
        timed, exact = self.step_for(settings["model"], settings["freeze"], train.batch, step_flops,
                                     train.ops_per_step)
        if timed is None or plan.cache != "none":
            return dataclasses.replace(plan, basis="fitted")
        seconds = timed.seconds
        if not exact:
            seconds *= train.step_estimate(self.rate) / step_time(timed.flops_per_step, timed.ops_per_step, self.rate)
        passes = [dataclasses.replace(p, step_seconds=seconds) if p.what == "train" else p for p in plan.passes]
        memory = plan.device_bytes
        if exact and timed.peak_memory_bytes is not None:
            memory = timed.peak_memory_bytes + device_data_bytes(settings, data_settings)
        return dataclasses.replace(plan, passes=passes, device_bytes=memory,
                                   basis="measured" if exact else "scaled")

    def apply_all(self, plans: list[RunPlan], config: dict, by_run: dict) -> list[RunPlan]:
        return [self.apply(p, by_run[p.run_id], cfg.data_settings(config, by_run[p.run_id]["dataset"]))
                for p in plans]

    def header(self) -> list[str]:
        lines = [BASIS_LEGEND,
                 "memory: measured runs take the measured peak plus their data on the device; the rest stay counted"]
        if not self.calibration.passed:
            lines.append(f"{self.calibration.path}: the check's correctness steps failed (its summary says which)")
        return lines


def _switch_names(switches: frozenset) -> str:
    return "+".join(sorted(switches)) or "faithful (no speed switch)"


def measured(calibration: Calibration, speed: dict, assumed: Rate) -> Measured:
    """The steps timed in the switches this configuration uses, and the rate fitted to them (``assumed``: the
    plan's rate without a measurement, for what the steps leave open)."""
    steps = tuple(s for s in calibration.steps if s.switches == switches_in_effect(speed, calibration, s.has_conv))
    if not steps:
        timed = sorted({_switch_names(s.switches) for s in calibration.steps}) or ["nothing"]
        raise CalibrationError(f"{calibration.path}: its field 'step_times' has no step timed with the speed switches "
                               f"this configuration uses on that device "
                               f"({_switch_names(switches_in_effect(speed, calibration, True))}); it timed "
                               f"{', '.join(timed)}: plan the configuration with those switches, or without "
                               "--calibration")
    flops_per_second, per_op = fit_rate([(s.flops_per_step, s.ops_per_step, s.seconds) for s in steps], assumed)
    models = len({(s.model, s.freeze) for s in steps})
    switches = _switch_names(switches_in_effect(speed, calibration, True))
    basis = (f"{calibration.label}, measured by cnnrepro gpu-check ({calibration.path}, {calibration.created}): "
             f"{models} training steps timed, {switches}; the rest at the rate fitted to them, "
             f"{flops_per_second / 1e12:.2f} TFLOP/s and {per_op * 1e6:.1f} us per op (replacing the assumed "
             "efficiency and per-op cost)")
    memory = calibration.memory_gib or (DEVICES[calibration.device].memory_gib if calibration.device in DEVICES
                                        else None)
    rate = Rate(calibration.device, calibration.label, flops_per_second, per_op, basis, memory)
    return Measured(calibration, rate, steps)


def basis_counts(plans: list[RunPlan]) -> str:
    """``measured 2, fitted 1``: how many runs have each basis."""
    counts = Counter(p.basis for p in plans)
    return ", ".join(f"{basis} {counts[basis]}" for basis in BASES if counts[basis])
