"""Training in processes of their own, as the workflow's jobs train: two identical runs must end with identical
weights (determinism), and a run interrupted with SIGINT after a checkpoint and started again must end with the
weights of a run that was never interrupted (resume). Weights are compared bit for bit."""

from __future__ import annotations

import copy
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cnnrepro import config as cfg
from cnnrepro.data import compact, sources
from cnnrepro.gpucheck.child import child_env
from cnnrepro.gpucheck.profiles import Profile
from cnnrepro.runtime import io

POLL_SECONDS = 0.01


@dataclass
class Training:
    """The run the checks train: its settings (the profile's length, batch and device), synthetic data and folder."""

    settings: dict
    data: Path
    settings_file: Path
    folder: Path
    threads: int
    finished: dict = field(default_factory=dict)  # run name -> exit status of its completed process

    def run_folder(self, name: str) -> Path:
        return self.folder / name


def prepare(settings_by_run: dict, config: dict, profile: Profile, device_type: str, folder: Path) -> Training:
    """The profile's training run (or the configuration's first, where it has not that run), made short, its data."""
    settings = copy.deepcopy(settings_by_run.get(profile.training_run) or next(iter(settings_by_run.values())))
    recipe = settings["recipe"]
    recipe[cfg.run_length_key(recipe)] = profile.training_epochs
    if profile.training_batch:
        recipe["batch_size"] = profile.training_batch
    settings.update(device=device_type, pretrained=False)  # no weights to fetch; the check is of the training
    shutil.rmtree(folder, ignore_errors=True)  # an earlier check's runs: a run must start from nothing
    data = folder / "data" / f"{settings['dataset']}.pt"
    data.parent.mkdir(parents=True, exist_ok=True)
    info = cfg.dataset_info(config, settings["dataset"])  # a built-in or a declared dataset: its shapes and classes
    compact.write_compact(sources.make_synthetic(info, *profile.training_images), data,
                          {"dataset": settings["dataset"], "source": "synthetic"})
    settings_file = folder / "settings.json"
    io.write_json(settings_file, settings)
    return Training(settings, data, settings_file, folder, profile.training_threads or config["train_threads"])


def start(training: Training, name: str) -> subprocess.Popen:
    """Train the run in a process of its own, into folder ``name``; its output appended to ``name``/train.log."""
    folder = training.run_folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "a", encoding="utf-8") as log:
        return subprocess.Popen([sys.executable, "-m", "cnnrepro.gpucheck.child", str(training.settings_file),
                                 str(training.data), str(folder), str(training.threads)],
                                stdout=log, stderr=subprocess.STDOUT, env=child_env())


def finish(process: subprocess.Popen, timeout: float) -> int | None:
    """The process's exit status; None when it ran past ``timeout`` (it is then killed)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def weight_differences(a: Path, b: Path) -> list[str]:
    """The tensors of two saved state_dicts that differ in any bit (empty: identical)."""
    first, second = (torch.load(path, map_location="cpu", weights_only=True) for path in (a, b))
    if first.keys() != second.keys():
        return [f"different tensors: {sorted(set(first) ^ set(second))}"]
    differ = []
    for key, x in first.items():
        y = second[key]
        same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(
            x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        if not same:
            gap = (x.double() - y.double()).abs().max().item() if x.shape == y.shape else "shape"
            differ.append(f"{key} (max |difference| {gap})")
    return differ


def _compared(training: Training, a: str, b: str) -> dict:
    differ = weight_differences(training.run_folder(a) / "weights.pt", training.run_folder(b) / "weights.pt")
    tensors = len(torch.load(training.run_folder(a) / "weights.pt", map_location="cpu", weights_only=True))
    return {"tensors": tensors, "identical": not differ, "differing": differ[:10]}


def _start_reference(training: Training) -> subprocess.Popen | None:
    """The uninterrupted run, started now; None when an earlier step already trained it."""
    return None if "reference" in training.finished else start(training, "reference")


def _finish_reference(training: Training, process: subprocess.Popen | None, timeout: float) -> int | None:
    if process is not None:
        training.finished["reference"] = finish(process, timeout)
    return training.finished["reference"]


def determinism(training: Training, timeout: float, progress: Callable[[str], None]) -> tuple[bool, dict]:
    """Two runs of the same settings at once; (passed, details): identical weights."""
    progress(f"determinism: training {training.settings['run_id']} twice ({training.settings['model']}, "
             f"{training.settings['recipe']['batch_size']} per batch) in processes of their own")
    reference, again = _start_reference(training), start(training, "again")
    statuses = {"again": finish(again, timeout), "reference": _finish_reference(training, reference, timeout)}
    details = {"run_id": training.settings["run_id"], "exit_status": statuses, "folder": str(training.folder)}
    if any(status != 0 for status in statuses.values()):
        return False, {**details, "error": "a training process failed (its train.log says why)"}
    details.update(_compared(training, "reference", "again"))
    return details["identical"], details


def _interrupt_after_first_checkpoint(process: subprocess.Popen, checkpoint: Path, timeout: float) -> bool:
    """Send SIGINT (Ctrl-C) as soon as the first epoch's checkpoint exists; whether it was sent in time."""
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    process.send_signal(signal.SIGINT)
    return True


def resume(training: Training, timeout: float, progress: Callable[[str], None]) -> tuple[bool, dict]:
    """A run interrupted with SIGINT after its first checkpoint, then started again; (passed, details): it says it
    resumed, and its weights equal the uninterrupted run's."""
    epochs = training.settings["recipe"][cfg.run_length_key(training.settings["recipe"])]
    progress(f"resume: training {training.settings['run_id']} for {epochs} epochs, Ctrl-C after the first "
             "checkpoint, then again")
    reference, interrupted = _start_reference(training), start(training, "interrupted")
    folder = training.run_folder("interrupted")
    sent = _interrupt_after_first_checkpoint(interrupted, folder / "checkpoint.pt", timeout)
    details = {"run_id": training.settings["run_id"], "epochs": epochs, "sigint_sent": sent,
               "interrupted_status": finish(interrupted, timeout), "folder": str(folder)}
    stopped_at = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"] \
        if (folder / "checkpoint.pt").exists() else None
    details["checkpoint_epoch_at_interrupt"] = stopped_at
    cut_short = sent and details["interrupted_status"] not in (0, None) and stopped_at is not None and \
        stopped_at < epochs and not (folder / "metrics.json").exists()
    if cut_short:
        details["resumed_status"] = finish(start(training, "interrupted"), timeout)
    details["reference_status"] = _finish_reference(training, reference, timeout)
    if not cut_short:
        return False, {**details, "error": "the run was not interrupted mid-run (it finished, failed or hung first; "
                                           "its train.log says which)"}
    if details["resumed_status"] != 0 or details["reference_status"] != 0:
        return False, {**details, "error": "a training process failed (its train.log says why)"}
    log = (folder / "train.log").read_text(encoding="utf-8", errors="replace")
    details["said_resuming"] = f"resuming {training.settings['run_id']} from the checkpoint" in log
    details.update(_compared(training, "reference", "interrupted"))
    return details["said_resuming"] and details["identical"], details
