"""Per-epoch checkpoints: what a killed run resumes from, written atomically.

A checkpoint holds only the state training can change (trainable parameters, buffers, optimizer,
schedule, RNG, history) plus digests that tie it to its settings, data and frozen weights; one that
does not match is ignored with a logged reason, so a rerun starts over instead of mixing runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from cnnrepro import io

log = logging.getLogger("cnnrepro.checkpoint")

# 2: checkpoints hold only the state training can change, plus a digest of the frozen rest.
# 3: they also hold the training seconds so far, so a resumed run reports its whole time; tensors are saved
#    from the CPU, and only a CUDA run's own device RNG.
VERSION = 3


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


def mutable_state(model: nn.Module, clone: bool = False) -> dict:
    """The state entries training can change: trainable parameters and buffers (BatchNorm statistics).

    Frozen parameters never change, so checkpoints and the kept "best" state leave them out: for a frozen
    ResNet50 that is ~100 MB less to write every epoch, which would otherwise dominate a cached-feature epoch.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: (v.detach().clone() if clone else v) for k, v in model.state_dict().items()
            if k in trainable or k in buffers}


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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file must not cost the run: start over instead
        log.warning("ignoring checkpoint %s: it cannot be read (%s: %s)", path, type(exc).__name__, exc)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint or ckpt.get("version") != VERSION:
        log.warning("ignoring checkpoint %s: it was written for other settings, data or engine version", path)
        return None
    if ckpt.get("frozen_digest") != frozen:
        log.warning("ignoring checkpoint %s: its frozen weights differ from this model's (changed weights file?)",
                    path)
        return None
    return ckpt


def save(path: Path, **state) -> None:
    io.torch_save({"version": VERSION, **state}, path)
