"""``cnnrepro gpu-check``: the steps in order, each timed and recorded, within the budget; gpu-check.json (read by
``cnnrepro plan --calibration``) and its one-page summary are rewritten after every step, so an interrupted check
leaves what it found."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from cnnrepro.bench import trained
from cnnrepro.engine.recipe import CUBLAS_WORKSPACE, build_run_model
from cnnrepro.gpucheck import smoke, summary, timing, training
from cnnrepro.gpucheck.profiles import BUDGET_SECONDS, PROFILES, Profile
from cnnrepro.plan.calibration import FILE_NAME, FORMAT, device_key
from cnnrepro.runtime import io
from cnnrepro.runtime.device import cpu_name, device_name, pick_device

# The steps as --steps names them, in the order they run (determinism trains the run that resume compares with).
STEPS = ("smoke", "determinism", "resume", "bench", "step_times")
CORRECTNESS = ("smoke", "resume", "determinism")
SUMMARY_NAME = "gpu-check.md"
FINISH_SECONDS = 5.0  # kept back from the budget for writing the results


def device_record(device: torch.device) -> dict:
    """Which device measured: its name, compute capability and memory (CUDA), and how the plan calls it."""
    cuda = device.type == "cuda"
    name = device_name(device)
    return {"kind": device.type, "name": name, "plan_device": device_key(device.type, name),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
            "memory_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None, "cpu": cpu_name(),
            "cpu_count": os.cpu_count()}


@contextlib.contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Check:
    config: dict  # checked (cnnrepro.startup)
    settings: dict[str, dict]  # run id -> its settings
    device: torch.device
    profile: Profile
    out: Path
    steps: tuple[str, ...]
    budget: float
    record: dict
    started: float = field(default_factory=time.monotonic)
    training_run: training.Training | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def progress(self, message: str) -> None:
        print(f"[gpu-check {self.elapsed():4.0f}s/{self.budget:.0f}s] {message}", file=sys.stderr, flush=True)

    def write(self) -> None:
        self.record["seconds"] = round(self.elapsed(), 1)
        io.write_json(self.out / FILE_NAME, self.record)
        io.write_text(self.out / SUMMARY_NAME, summary.render(self.record, STEPS))

    def run_step(self, name: str, step: Callable[[], tuple[bool, dict]]) -> None:
        if name not in self.steps:
            self.record["steps"][name] = {"status": "skipped", "seconds": 0.0, "details": {"reason": "not in --steps"}}
            return
        start = time.monotonic()
        try:
            passed, details = step()
        except Exception as error:  # a step that crashes is a failed step; the others still run
            passed, details = False, {"error": f"{type(error).__name__}: {error}",
                                      "traceback": traceback.format_exc().splitlines()[-12:]}
        seconds = round(time.monotonic() - start, 1)
        self.record["steps"][name] = {"status": "passed" if passed else "failed", "seconds": seconds,
                                      "details": details}
        self.progress(f"{name}: {'passed' if passed else 'FAILED'} in {seconds:.0f} s")
        self.write()

    # --- the steps -----------------------------------------------------------------------------------------------

    def prepared_training(self) -> training.Training:
        if self.training_run is None:
            self.training_run = training.prepare(self.settings, self.config, self.profile,
                                                 self.device.type, self.out / "train")
        return self.training_run

    def smoke(self) -> tuple[bool, dict]:
        timeout = max(self.left() - self.profile.reserve_after_smoke, 60.0)
        return smoke.run_smoke(self.out / "smoke", self.device.type, self.profile.smoke_run, timeout, self.progress)

    def determinism(self) -> tuple[bool, dict]:
        return training.determinism(self.prepared_training(), max(self.left(), 60.0), self.progress)

    def resume(self) -> tuple[bool, dict]:
        return training.resume(self.prepared_training(), max(self.left(), 60.0), self.progress)

    def bench(self) -> tuple[bool, dict]:
        """The benchmark job's measurement (cnnrepro.bench.trained) of the trained run's model, or of its untrained
        model when no step trained it."""
        run = self.prepared_training()
        weights = run.run_folder("reference") / "weights.pt"
        if not weights.is_file():
            weights = self.out / "bench" / "untrained.pt"
            io.torch_save(build_run_model(run.settings, pretrained=False).state_dict(), weights)
        kind = "gpu" if self.device.type == "cuda" else "cpu"
        options = {**self.config["benchmark"], **self.profile.bench}
        self.progress(f"bench: {run.settings['model']} on the {kind} as the benchmark job measures it")
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:  # the job sets TF32 as the run's speed block says; the step timing after it sets its own
            record = trained.measure_job(run.settings, weights, run.data, kind, options)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        if record is None:
            return False, {"error": "no CUDA device for the GPU benchmark"}
        io.write_json(self.out / "bench" / f"{kind}.json", record)
        latency = record["latency_correct"]["median_ms"]
        details = {"model": run.settings["model"], "kind": kind, "record": str(self.out / "bench" / f"{kind}.json"),
                   "latency_correct_median_ms": latency, "latency_paper_mean_ms": record["latency_paper"]["mean_ms"],
                   "data_parallel": record["latency_paper"]["data_parallel"],
                   "images_per_s": {str(t["batch_size"]): t["images_per_s"] for t in record["throughput"]},
                   "peak_memory_bytes": record["peak_memory"]["peak_bytes"]}
        return bool(record["measured"]) and latency > 0, details

    def step_times(self) -> tuple[bool, dict]:
        runs = timing.representative_runs(self.settings, self.profile)
        self.progress(f"step_times: {len(runs)} runs, faithful first, then each speed switch, within "
                      f"{max(self.left(), 0):.0f} s")
        deadline = self.started + self.budget - FINISH_SECONDS
        with _threads(self.config["train_threads"]):
            result = timing.sweep(runs, self.device, self.profile, deadline, self.progress)
        self.record["step_times"] = result.entries
        errors = [f"{e['run_id']} [{e['setting']}]: {e['error']}" for e in result.entries if e["error"]]
        details = {"runs": len(runs), "measured": sum(e["ms_median"] is not None for e in result.entries),
                   "errors": errors, "skipped": result.skipped, "not_applicable": result.not_applicable}
        return not errors, details


def new_record(device: torch.device, profile: Profile, budget: float, command: str) -> dict:
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command, "profile": profile.name, "budget_seconds": budget, "seconds": 0.0,
            "passed": None, "failed_steps": [], "device": device_record(device), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "python_version": platform.python_version(),
            "steps": {}, "step_times": []}


def run_check(config: dict, settings: dict[str, dict], device_type: str, out: Path, steps: tuple[str, ...] = STEPS,
              budget: float | None = None, command: str = "cnnrepro gpu-check") -> int:
    """Run the selected steps of a checked configuration (its runs' ``settings``) on ``device_type`` (cuda | cpu)
    into ``out``; 0 when none failed, else 1. ``out`` is new, empty or an earlier check's: its folders are
    replaced."""
    if out.is_dir() and any(out.iterdir()) and not (out / FILE_NAME).is_file():
        raise FileExistsError(f"{out} holds files but no {FILE_NAME}: give --out a new folder (or an earlier "
                              "check's, which is replaced)")
    device = pick_device(device_type)
    if device.type == "cuda":
        # Before this process's first cuBLAS call (the benchmark's), so the step timing can be deterministic later.
        for key, value in CUBLAS_WORKSPACE.items():
            os.environ.setdefault(key, value)
    profile = PROFILES[device.type]
    out.mkdir(parents=True, exist_ok=True)
    budget = budget or BUDGET_SECONDS
    check = Check(config, settings, device, profile, out.resolve(), steps, budget,
                  new_record(device, profile, budget, command))
    check.progress(f"{check.record['device']['name']} ({device.type}), profile {profile.name}, steps "
                   f"{', '.join(s for s in STEPS if s in steps)}; results in {out}")
    for name in STEPS:
        check.run_step(name, getattr(check, name))
    failed = [name for name, step in check.record["steps"].items() if step["status"] == "failed"]
    check.record.update(passed=not any(name in CORRECTNESS for name in failed), failed_steps=failed)
    check.write()
    check.progress(f"{'FAILED: ' + ', '.join(failed) if failed else 'passed'}; {out / FILE_NAME}, "
                   f"{out / SUMMARY_NAME}")
    return 1 if failed else 0
