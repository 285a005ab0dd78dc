"""The smoke preset end to end: the real ``snakemake`` on presets/smoke.yaml, on the check's device, its results in
the check's own folder; then what README's "First run on a GPU" says to look at (every run trained on that device,
every GPU benchmark measured)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from cnnrepro import config as cfg
from cnnrepro.gpucheck.child import child_env
from cnnrepro.runtime import io

SMOKE_PRESET = "presets/smoke.yaml"
LOG_TAIL_LINES = 25


def smoke_command(results: Path, device_type: str, run: str | None) -> list[str]:
    """snakemake on the smoke preset into ``results`` (every job run again, whatever is there): all of it, or the
    train job of ``run`` (its record, the train rule's output) and what that needs."""
    target = [str(results / "runs" / run / "metrics.json")] if run else []
    return [sys.executable, "-m", "snakemake", *target, "--cores", str(os.cpu_count() or 1), "--forceall",
            "--configfile", SMOKE_PRESET, "--config", f"results={results}", f"device={device_type}"]


def _run(command: list[str], log: Path, timeout: float) -> int | None:
    """The command's exit status, its output in ``log``; None when it ran past ``timeout`` (its jobs are stopped)."""
    with open(log, "w", encoding="utf-8") as handle:
        # A session of its own, so that a timeout stops snakemake's jobs with it.
        process = subprocess.Popen(command, cwd=cfg.REPO_ROOT, env=child_env(), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return None


def inspect_results(results: Path, device_type: str) -> dict:
    """What the smoke run left: its runs' records and devices, its GPU benchmarks, its report pages."""
    records = [io.read_json(path) for path in sorted((results / "runs").glob("**/metrics.json"))]
    gpu = [io.read_json(path) for path in sorted((results / "bench").glob("**/gpu.json"))]
    devices = sorted({str(r.get("device")) for r in records})
    return {"runs": len(records), "runs_ok": sum(r.get("status") == "ok" for r in records), "devices": devices,
            "on_the_device": all(d.split(":")[0] == device_type for d in devices),
            "gpu_benchmarks": len(gpu), "gpu_benchmarks_measured": sum(bool(r.get("measured")) for r in gpu),
            "report_pages": len(list((results / "report").glob("**/index.html")))}


def run_smoke(folder: Path, device_type: str, run: str | None, timeout: float,
              progress: Callable[[str], None]) -> tuple[bool, dict]:
    """(passed, details) of the smoke preset on ``device_type`` (only ``run`` when given)."""
    shutil.rmtree(folder, ignore_errors=True)  # an earlier check's results would be counted with these
    folder.mkdir(parents=True)
    results, log = folder / "results", folder / "snakemake.log"
    command = smoke_command(results, device_type, run)
    progress(f"smoke: snakemake on {'its run ' + run if run else 'the whole preset'} (log: {log}), at most "
             f"{timeout:.0f} s")
    status = _run(command, log, timeout)
    details = {"command": " ".join(["snakemake", *command[3:]]), "target": run or "all", "log": str(log),
               "returncode": status, "timed_out": status is None, **inspect_results(results, device_type)}
    passed = (status == 0 and details["runs"] > 0 and details["runs_ok"] == details["runs"]
              and details["on_the_device"]
              and (device_type != "cuda" or details["gpu_benchmarks_measured"] == details["gpu_benchmarks"]))
    if not passed:
        details["log_tail"] = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return passed, details
