"""Provenance: what produced the numbers of a report (code, configuration, software, hardware, time).

Two sources: the environment the report job runs in (:func:`environment`: the git commit of the workflow and
whether its tree had uncommitted changes, a hash of the resolved configuration, software versions, GPU and CPU
models and thread counts) and what each run recorded (runs.csv: device, precision, status, times), summarised
per study by :func:`run_summary`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from cnnrepro.runtime.device import cpu_name

PathLike = str | Path


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the resolved configuration (defaults filled, overlays merged), keys sorted."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def git_state(folder: PathLike) -> dict[str, Any]:
    """{"commit", "dirty", "describe"} of the git checkout holding ``folder``; commit None when it is none."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # Tracked files only: results/ and other ignored or untracked files do not make a tree dirty.
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "describe": "not a git checkout (no commit recorded)"}
    dirty = bool(changed)
    return {"commit": commit, "dirty": dirty,
            "describe": f"git {commit[:12]}{' with uncommitted changes' if dirty else ''}"}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(folder: PathLike, config: Mapping[str, Any]) -> dict[str, Any]:
    """The report job's environment: code, configuration, versions, devices and threads."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return {
        "git": git_state(folder),
        "config_sha256": config_hash(config),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "cuda": torch.version.cuda or "none (CPU build)",
        "cudnn": str(cudnn) if cudnn else "none",
        "snakemake": _version("snakemake"),
        "gpu": "; ".join(gpus) if gpus else "none (no CUDA device)",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "train_threads": config.get("train_threads"),
        "benchmark_threads": (config.get("benchmark") or {}).get("cpu_threads"),
        "host": platform.node(),
        "generated": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _distinct(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values if v not in (None, "") and str(v) != "nan"))


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


def run_summary(runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per study (or for all runs given): how many runs ended how, when they started and finished, the
    training compute summed over runs, and the devices, precisions and software they recorded."""
    runs = list(runs)
    counts: dict[str, int] = {}
    for run in runs:
        counts[str(run.get("status") or "not run")] = counts.get(str(run.get("status") or "not run"), 0) + 1
    seconds = sum(float(r["train_seconds"]) for r in runs if r.get("train_seconds") not in (None, ""))
    starts = sorted(str(r["started_at"]) for r in runs if r.get("started_at"))
    ends = sorted(str(r["finished_at"]) for r in runs if r.get("finished_at"))
    readable = lambda stamp: stamp[:16].replace("T", " ")  # noqa: E731 - local time, as "generated" says
    return {
        "runs": len(runs),
        "statuses": counts,
        "started": readable(starts[0]) if starts else None,
        "finished": readable(ends[-1]) if ends else None,
        "train_seconds": seconds,
        "train_time": _hms(seconds),
        "devices": _distinct(r.get("device_name") for r in runs),
        "precisions": _distinct(r.get("precision") for r in runs),
        "torch": _distinct(r.get("torch_version") for r in runs),
        "python": _distinct(r.get("python_version") for r in runs),
        "hosts": _distinct(r.get("host") for r in runs),
        "threads": _distinct(r.get("threads") for r in runs),
    }
