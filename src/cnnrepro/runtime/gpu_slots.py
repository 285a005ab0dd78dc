"""GPU slots on a multi-GPU machine: a lock-file allocator that sets ``CUDA_VISIBLE_DEVICES``, one job per GPU, or
up to k small jobs per GPU when they share (config ``gpu_share``).

Snakemake's ``--resources gpu=N`` only counts jobs; it never says which GPU a job should use, so without this
every job would open GPU 0. A GPU job calls :func:`acquire` before torch initialises CUDA and hides the other GPUs
from itself. Each visible GPU has a lock file. A job that holds its GPU alone takes an exclusive ``fcntl.flock``
on it; a job that shares it with up to k - 1 others takes a shared flock on it and an exclusive one on one of the
GPU's k share files. So up to k sharing jobs hold a GPU at once, a job alone waits until none does, and they wait
while it runs. Every lock is tried without blocking and let go again when the whole slot cannot be had, so no
order of jobs deadlocks. The kernel releases the locks when the process ends in any way (SIGKILL and the OOM
killer included), so a dead job never keeps a slot. A job that finds no slot waits and logs who holds the GPUs.

Nothing happens under SLURM (``SLURM_JOB_ID``: SLURM assigns the device or the shard) or for a job pinned to the
CPU. The GPUs are found without initialising CUDA: ``CUDA_VISIBLE_DEVICES`` when it is set, else ``nvidia-smi -L``.
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



@dataclass(frozen=True)
class Slot:
    gpu: str  # the GPU's id as the parent saw it (an index or a UUID): this job's CUDA_VISIBLE_DEVICES
    lock_files: tuple[Path, ...]  # what this job holds: the GPU's lock file, and its share file when it shares
    share: int = 1  # how many jobs may hold this GPU at once (1: this job alone)


_held: dict[Slot, list] = {}  # each slot's open lock files in this process: closing one would release the slot


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


def _gpu_file(directory: Path, gpu: str) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"


def _share_file(gpu_file: Path, index: int) -> Path:
    return gpu_file.with_name(f"{gpu_file.stem}.share-{index}.lock")


def _flock(lock_file: Path, mode: int):
    """The open lock file, locked (``fcntl.LOCK_EX`` or ``LOCK_SH``) without waiting; None when it is held."""
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _mark(handle) -> None:
    """Write this process into an exclusively held lock file: who holds it, for the waiting jobs' log."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()


def _holder(lock_file: Path) -> str:
    try:
        return lock_file.read_text().strip() or "?"
    except OSError:
        return "?"


def _take_alone(gpu_file: Path) -> list | None:
    handle = _flock(gpu_file, fcntl.LOCK_EX)
    if handle is None:
        return None
    _mark(handle)
    return [handle]


def _take_share(gpu_file: Path, share: int) -> list | None:
    """A shared lock on the GPU and one of its ``share`` share files, or None (and nothing held)."""
    gpu = _flock(gpu_file, fcntl.LOCK_SH)
    if gpu is None:
        return None  # a job holds it alone
    for index in range(share):
        own = _flock(_share_file(gpu_file, index), fcntl.LOCK_EX)
        if own is not None:
            _mark(own)
            return [gpu, own]
    gpu.close()
    return None


def _holders(gpu_file: Path) -> str:
    """Who holds a GPU, for the log: probed with locks taken and let go at once (a job trying at that instant
    tries again at its next poll)."""
    probe = _flock(gpu_file, fcntl.LOCK_SH)
    if probe is None:
        return f"{_holder(gpu_file)} alone"
    probe.close()
    sharers = []
    for share_file in sorted(gpu_file.parent.glob(f"{gpu_file.stem}.share-*.lock")):
        free = _flock(share_file, fcntl.LOCK_EX)
        if free is None:
            sharers.append(_holder(share_file))
        else:
            free.close()
    return f"shared by {', '.join(sharers)}" if sharers else "free"


def acquire(device: str, env: MutableMapping[str, str] | None = None, slot_dir: str | Path | None = None,
            query: Callable[[], list[str]] = nvidia_smi_gpus, poll: float = POLL_SECONDS,
            timeout: float | None = None, share: int = 1) -> Slot | None:
    """Take a GPU slot for this process and set ``CUDA_VISIBLE_DEVICES`` to its GPU in ``env`` (os.environ);
    wait, logging, while there is none. ``share``: up to this many jobs that share hold one GPU at once (the
    lowest-numbered GPU with room first, which leaves whole GPUs for jobs alone); 1: the GPU alone. None (and
    nothing changed) for device ``cpu``, under SLURM, or with no GPU. Call before anything initialises CUDA.
    ``timeout``: give up with TimeoutError (tests)."""
    env = os.environ if env is None else env
    if device == "cpu" or env.get("SLURM_JOB_ID"):
        return None
    gpus = visible_gpus(env, query)
    if not gpus:
        return None
    directory = Path(slot_dir) if slot_dir else default_slot_dir()
    directory.mkdir(parents=True, exist_ok=True)
    files = [_gpu_file(directory, gpu) for gpu in gpus]
    how = "alone" if share == 1 else f"sharing it with up to {share - 1} other job(s)"
    started, last_log = time.monotonic(), None
    while True:
        for gpu, gpu_file in zip(gpus, files):
            handles = _take_alone(gpu_file) if share == 1 else _take_share(gpu_file, share)
            if handles is not None:
                slot = Slot(gpu, tuple(Path(handle.name) for handle in handles), share)
                _held[slot] = handles
                env["CUDA_VISIBLE_DEVICES"] = gpu
                waited = time.monotonic() - started
                log.info("GPU slot: using GPU %s of %s, %s (CUDA_VISIBLE_DEVICES=%s)%s", gpu, ",".join(gpus), how,
                         gpu, f" after waiting {waited:.0f} s" if last_log is not None else "")
                return slot
        now = time.monotonic()
        if last_log is None or now - last_log >= LOG_EVERY_SECONDS:
            held = ", ".join(f"GPU {gpu}: {_holders(f)}" for gpu, f in zip(gpus, files))
            wanted = "" if share == 1 else f" (a GPU up to {share} jobs share)"
            log.info("waiting for a free GPU slot%s: all %d are held (%s); locks in %s", wanted, len(gpus), held,
                     directory)
            last_log = now
        if timeout is not None and now - started >= timeout:
            raise TimeoutError(f"no GPU slot became free in {timeout:.0f} s ({len(gpus)} GPUs, locks in {directory})")
        time.sleep(poll)


def release(slot: Slot | None) -> None:
    """Give a slot back before the process ends (it is released at exit anyway)."""
    if slot is not None:
        for handle in _held.pop(slot, []):
            handle.close()
