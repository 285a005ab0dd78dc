"""One GPU per job on a multi-GPU machine: a lock-file slot allocator that sets ``CUDA_VISIBLE_DEVICES``.

Snakemake's ``--resources gpu=N`` only counts jobs; it never says which GPU a job should use, so without this
every job would open GPU 0. A GPU job calls :func:`acquire` before torch initialises CUDA: it takes an exclusive
``fcntl.flock`` on one lock file per visible GPU and hides the other GPUs from itself. The kernel releases the
lock when the process ends in any way (SIGKILL and the OOM killer included), so a dead job never keeps a slot.
When every slot is held the job waits and logs that it waits.

Nothing happens under SLURM (``SLURM_JOB_ID``: SLURM assigns the device) or for a job pinned to the CPU.
The GPUs are found without initialising CUDA: ``CUDA_VISIBLE_DEVICES`` when it is set, else ``nvidia-smi -L``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, MutableMapping

log = logging.getLogger(__name__)

# Slots are per machine, not per workflow: two workflows on one box must not share a GPU either.
SLOT_DIR_ENV = "CNNREPRO_GPU_SLOT_DIR"
POLL_SECONDS = 2.0
LOG_EVERY_SECONDS = 60.0

_held: list = []  # open lock files of this process: closing one would release its slot


@dataclass(frozen=True)
class Slot:
    gpu: str  # the GPU's id as the parent saw it (an index or a UUID): this job's CUDA_VISIBLE_DEVICES
    lock_file: Path


def nvidia_smi_gpus() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (no CUDA context is created); none without the tool."""
    tool = shutil.which("nvidia-smi")
    if not tool:
        return []
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^GPU (\d+):", out, flags=re.MULTILINE)


def visible_gpus(env: MutableMapping[str, str] | None = None,
                 query: Callable[[], list[str]] = nvidia_smi_gpus) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set (empty: none), else ``query()``."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [gpu.strip() for gpu in env["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    return query()


def default_slot_dir() -> Path:
    return Path(os.environ.get(SLOT_DIR_ENV) or Path(tempfile.gettempdir()) / f"cnnrepro-gpu-slots-{os.getuid()}")


def _holder(lock_file: Path) -> str:
    try:
        return lock_file.read_text().strip() or "?"
    except OSError:
        return "?"


def _try_lock(lock_file: Path):
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def acquire(device: str, env: MutableMapping[str, str] | None = None, slot_dir: str | Path | None = None,
            query: Callable[[], list[str]] = nvidia_smi_gpus, poll: float = POLL_SECONDS,
            timeout: float | None = None) -> Slot | None:
    """Take a free GPU slot for this process and set ``CUDA_VISIBLE_DEVICES`` to it in ``env`` (os.environ);
    wait, logging, while all are held. None (and nothing changed) for device ``cpu``, under SLURM, or with no
    GPU. Call before anything initialises CUDA. ``timeout``: give up with TimeoutError (tests)."""
    env = os.environ if env is None else env
    if device == "cpu" or env.get("SLURM_JOB_ID"):
        return None
    gpus = visible_gpus(env, query)
    if not gpus:
        return None
    directory = Path(slot_dir) if slot_dir else default_slot_dir()
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock" for gpu in gpus]
    started, last_log = time.monotonic(), None
    while True:
        for gpu, lock_file in zip(gpus, files):
            handle = _try_lock(lock_file)
            if handle is not None:
                _held.append(handle)
                env["CUDA_VISIBLE_DEVICES"] = gpu
                waited = time.monotonic() - started
                log.info("GPU slot: using GPU %s of %s (CUDA_VISIBLE_DEVICES=%s)%s", gpu, ",".join(gpus), gpu,
                         f" after waiting {waited:.0f} s" if last_log is not None else "")
                return Slot(gpu, lock_file)
        now = time.monotonic()
        if last_log is None or now - last_log >= LOG_EVERY_SECONDS:
            held = ", ".join(f"GPU {gpu}: {_holder(f)}" for gpu, f in zip(gpus, files))
            log.info("waiting for a free GPU slot: all %d are held (%s); locks in %s", len(gpus), held, directory)
            last_log = now
        if timeout is not None and now - started >= timeout:
            raise TimeoutError(f"no GPU slot became free in {timeout:.0f} s ({len(gpus)} GPUs, locks in {directory})")
        time.sleep(poll)


def release(slot: Slot | None) -> None:
    """Give a slot back before the process ends (it is released at exit anyway)."""
    if slot is None:
        return
    for handle in list(_held):
        if Path(handle.name) == slot.lock_file:
            _held.remove(handle)
            handle.close()
