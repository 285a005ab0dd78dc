"""Per-epoch checkpoints: what a killed run resumes from, written atomically.

A checkpoint holds only the state training can change (trainable parameters, buffers, optimizer,
schedule, RNG, history) plus digests that tie it to its settings, data and frozen weights; one that
does not match is ignored with a logged reason, so a rerun starts over instead of mixing runs.

A finished run's last checkpoint can become its *final state* (``final_state.pt``, a workflow output), which a
longer run of the same settings continues from (epoch grid chaining, cnnrepro.engine.chaining); a run that no other
continues leaves a small placeholder there instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from cnnrepro.runtime import io

log = logging.getLogger(__name__)

# 2: checkpoints hold only the state training can change, plus a digest of the frozen rest.
# 3: they also hold the training seconds so far, so a resumed run reports its whole time; tensors are saved
#    from the CPU, and only a CUDA run's own device RNG.
# 4: history rows may have no evaluation (recipe.eval_every: None); they record the run this one continued from.
VERSION = 4


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """The random streams a run draws from. Only a CUDA run asks CUDA (a CPU job never initialises it), and
    only for its own device, so a resume with fewer GPUs visible still fits."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    # RNG states are CPU byte tensors whatever device the run uses (load() keeps them on the CPU).
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def to_cpu(state: dict) -> dict:
    """A state dict with every tensor on the CPU: what a file must hold to load on a machine without a GPU."""
    return {key: value.detach().cpu() for key, value in state.items()}


def cpu_copy(state: dict) -> dict:
    """A copy of a state dict in host memory (a copy even of CPU tensors): a state kept while training goes
    on, such as select: best's, neither changes with the model nor takes GPU memory."""
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def mutable_state(model: nn.Module) -> dict:
    """The state entries training can change: trainable parameters and buffers (BatchNorm statistics).

    Frozen parameters never change, so checkpoints and the kept "best" state leave them out: for a frozen
    ResNet50 that is ~100 MB less to write every epoch, which would otherwise dominate a cached-feature epoch.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in trainable or k in buffers}


def frozen_digest(model: nn.Module) -> str:
    """sha256 of the state a checkpoint leaves out, so a resume can check it starts from the same frozen weights."""
    mutable = mutable_state(model)
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        if key not in mutable:
            digest.update(key.encode())
            # contiguous(): the digest must not depend on the channels_last layout.
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_state(model: nn.Module, partial: dict) -> None:
    # Strict loading of the full dict: a key the model does not have is still an error.
    model.load_state_dict({**model.state_dict(), **partial})


def load(path: Path, fingerprint: str, frozen: str) -> dict | None:
    """The checkpoint at ``path`` if it was written for this fingerprint and these frozen weights, else None.

    It is loaded to the CPU: load_state_dict copies weights and optimizer state onto the model's device
    (Adam's ``step`` stays on the CPU, as torch keeps it), and the RNG states must stay CPU byte tensors.
    """
    if not path.exists():
        return None
    ckpt, why_not = _read(path, fingerprint, frozen)
    if ckpt is None:
        log.warning("ignoring checkpoint %s: %s", path, why_not)
    return ckpt


def _read(path: Path, fingerprint: str, frozen: str) -> tuple[dict | None, str]:
    """(the state at ``path``, "") when it belongs to this fingerprint and these frozen weights, else (None, why)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file must not cost the run: start over instead
        return None, f"it cannot be read ({type(exc).__name__}: {exc})"
    if isinstance(ckpt, dict) and ckpt.get("kept") is False:
        return None, f"no state was kept there ({ckpt.get('reason')})"
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint or ckpt.get("version") != VERSION:
        return None, "it was written for other settings, data or engine version"
    if ckpt.get("frozen_digest") != frozen:
        return None, "its frozen weights differ from this model's (changed weights file?)"
    return ckpt, ""


def load_final(path: Path, fingerprint: str, frozen: str) -> tuple[dict | None, str]:
    """A finished run's final state if it was written for ``fingerprint`` (that run's) and these frozen weights,
    else None and the reason."""
    if not Path(path).exists():
        return None, f"its final state {path} does not exist"
    ckpt, why_not = _read(Path(path), fingerprint, frozen)
    return ckpt, (f"its final state {path}: {why_not}" if ckpt is None else "")


def promote_to_final(ckpt_path: Path, final_path: Path) -> None:
    """Make a finished run's last checkpoint its final state: a rename when both are on one file system (the
    usual case: both live under the results folder), else a copy to a temporary name beside the target first,
    so ``final_path`` is never partly written."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(ckpt_path, final_path)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        with io.atomic_path(final_path) as tmp:
            shutil.copyfile(ckpt_path, tmp)
        Path(ckpt_path).unlink(missing_ok=True)


def save_final_placeholder(final_path: Path, reason: str) -> None:
    """What ``final_state.pt`` holds when no state is kept: a few bytes saying why."""
    io.torch_save({"version": VERSION, "kept": False, "reason": reason}, final_path)


def save(path: Path, **state) -> None:
    io.torch_save({"version": VERSION, **state}, path)
