"""The run's data on the training device: uint8 splits, indexed and transformed per batch there; the stratified
selections that carve a validation split (and subsample a dataset when it is prepared)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnrepro.data import augment
from cnnrepro.data.catalog import DatasetCorrupt
from cnnrepro.data.compact import read_compact
from cnnrepro.runtime.device import memory_budget

log = logging.getLogger(__name__)
# The normalisation by the train split's own statistics (cnnrepro.config's AUTO_NORMALIZATION).
AUTO = "auto"


class Split:
    """One split for the epoch loop: uint8 images (or cached features), labels, and the batch transform.

    Held on the device (the whole split copied there once: the fast path), or streamed (``stream``): the images
    stay in the memory-mapped compact file and each batch is gathered on the host and copied to the device (pinned
    and non-blocking on a GPU). ``index`` selects the rows of ``x`` the split holds (a validation split carved from
    the training data) without copying them. Both paths give the same batches, bit for bit."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform, device: torch.device, stream: bool = False,
                 index: torch.Tensor | None = None):
        self.device = torch.device(device)
        self.stream = stream
        self.index = index if stream else None
        if stream:
            self.x = x
        else:
            self.x = (x if index is None else x[index]) if self.device.type == "cpu" else _gathered(x, index, device)
        self.y = (y if index is None else y[index]).to(device)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def _rows(self, host_idx: torch.Tensor) -> torch.Tensor:
        """A streamed split's batch: gathered from the mapped file, copied to the device."""
        rows = self.x[host_idx if self.index is None else self.index[host_idx]]
        if self.device.type == "cuda":
            rows = rows.pin_memory()
        return rows.to(self.device, non_blocking=True)

    def batches(self, batch_size: int, generator: torch.Generator | None, train: bool):
        n = len(self)
        order = (torch.randperm(n, generator=generator, device=self.device) if train
                 else torch.arange(n, device=self.device))
        host_order = order.cpu() if self.stream else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            rows = self._rows(host_order[start:start + batch_size]) if self.stream else self.x[idx]
            yield self.transform(rows, generator, train), self.y[idx]


GATHER_CHUNK_BYTES = 64 * 2**20


def _gathered(x: torch.Tensor, index: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``x[index]`` on ``device``, gathered a chunk at a time: a split of a memory-mapped file that is held on a GPU
    never passes through host memory whole (the train job's mem_mb does not count it)."""
    rows = len(x) if index is None else len(index)
    out = torch.empty((rows, *x.shape[1:]), dtype=x.dtype, device=device)
    chunk = max(1, GATHER_CHUNK_BYTES // max(x[0].numel() * x.element_size(), 1)) if len(x) else 1
    for start in range(0, rows, chunk):
        part = x[start:start + chunk] if index is None else x[index[start:start + chunk]]
        out[start:start + chunk].copy_(part)
    return out


def read_verified(data_path: str | Path) -> dict:
    """The compact dataset, checked against its sha256. A corrupt one is removed with its sidecar, so the next
    snakemake run rebuilds it (prepare_dataset) instead of anything training on it."""
    try:
        return read_compact(data_path)
    except DatasetCorrupt as error:
        Path(data_path).unlink(missing_ok=True)
        Path(f"{data_path}.json").unlink(missing_ok=True)
        raise DatasetCorrupt(f"{error}. Removed {data_path} and its sidecar: rerun snakemake, which "
                             "rebuilds them from the source before training again") from None


def identity(x: torch.Tensor, generator=None, train: bool = False) -> torch.Tensor:
    return x


def normalization(settings: dict, data: dict | None = None) -> tuple[list, list]:
    """The run's (mean, std): its settings', or with ``normalization: auto`` the train split's own: recorded when a
    declared dataset was prepared, computed from the prepared train split of a built-in one (whose file other
    studies share, so a study asking for them does not prepare it again)."""
    inp = settings["input"]
    if inp.get("normalization") != AUTO:
        return inp["mean"], inp["std"]
    stats = (data or {}).get("meta", {}).get("train_statistics")
    if stats is None:
        if data is None:
            raise ValueError("normalization auto needs the prepared dataset to read its statistics from")
        stats = channel_statistics(data["splits"]["train"]["x"])
    return stats["mean"], stats["std"]


def channel_statistics(x: torch.Tensor, chunk_bytes: int = 32 * 2**20) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of uint8 images [N, C, H, W] as the networks see them (pixels / 255),
    summed in float64 a chunk of at most ``chunk_bytes`` at a time (a mapped split is never read whole)."""
    channels = x.shape[1]
    chunk = max(1, chunk_bytes // max(8 * x[0].numel(), 1) if len(x) else 1)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].to(torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = max(len(x) * x.shape[2] * x.shape[3], 1)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def batch_transform(settings: dict, device: torch.device, augment_name: str | None = None,
                    data: dict | None = None):
    """The run's on-device batch transform (input adaptation, augmentation, normalisation); ``data``: the compact
    dataset, whose train split normalization: auto reads its statistics from."""
    inp = settings["input"]
    mean, std = normalization(settings, data)
    spec = {"rgb": inp["rgb"], "input_size": inp["size"], "augment": augment_name or settings["augment"],
            "mean": mean, "std": std, "channels_last": settings["speed"]["channels_last"]}
    return augment.build_batch_transform(spec, device)


def streams(data: dict, device: torch.device) -> bool:
    """Whether the splits stream from the mapped file: they do not fit the device's memory budget."""
    need = sum(s["x"].numel() * s["x"].element_size() for s in data["splits"].values())
    budget = memory_budget(device)
    stream = need > budget
    log.info("data: %s, %.1f MiB, %s the %s budget of %.1f MiB: %s", ", ".join(data["splits"]), need / 2**20,
             "over" if stream else "within", device.type, budget / 2**20,
             f"batches stream from the memory-mapped file to {device.type} (pinned, non-blocking copies)" if stream
             else f"the splits are held on {device.type}")
    return stream


def build_splits(settings: dict, data: dict, device: torch.device, generator: torch.Generator,
                 stream: bool | None = None) -> dict:
    """train / eval / test splits as the study defines them (validation split or test-as-validation), held on the
    device or streamed from the mapped file (``stream``: decided by the device's memory budget unless given)."""
    train_x, train_y = data["splits"]["train"]["x"], data["splits"]["train"]["y"]
    test_x, test_y = data["splits"]["test"]["x"], data["splits"]["test"]["y"]
    transform = batch_transform(settings, device, data=data)
    stream = streams(data, device) if stream is None else stream
    train_idx = val_idx = None
    if settings["eval_split"] == "val":
        train_idx, val_idx = stratified_split(train_y, settings["val_fraction"], settings["seed"])
    if augment.AUGMENTATIONS[settings["augment"]].copies:
        # A fixed augmented set, generated once, replaces the originals (seed 003's Keras expansion): it lives on
        # the device, whichever way the other splits go.
        picked_x = train_x if train_idx is None else train_x[train_idx]
        picked_y = train_y if train_idx is None else train_y[train_idx]
        expanded = augment.augment_copies(picked_x.to(device), picked_y.to(device), settings["augment_copies"],
                                          generator)
        train = Split(*expanded, transform, device)
    else:
        train = Split(train_x, train_y, transform, device, stream, train_idx)
    splits = {"train": train, "test": Split(test_x, test_y, transform, device, stream)}
    splits["eval"] = Split(train_x, train_y, transform, device, stream, val_idx) if val_idx is not None \
        else splits["test"]
    return splits


# ---------------------------------------------------------------------------------------------------------------------
# stratified selections
# ---------------------------------------------------------------------------------------------------------------------


def label_array(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return y.astype(np.int64, copy=False)


def _allocate(counts: np.ndarray, n_select: int) -> np.ndarray:
    """Per-class numbers summing to n_select, proportional to counts (largest remainder, ties → lower class)."""
    total = int(counts.sum())
    exact = counts * (n_select / total)
    alloc = np.floor(exact).astype(np.int64)
    remainder = n_select - int(alloc.sum())
    if remainder > 0:
        frac = exact - alloc
        order = np.lexsort((np.arange(len(counts)), -frac))  # largest fraction first, then class index
        order = [c for c in order if alloc[c] < counts[c]]
        for c in order[:remainder]:
            alloc[c] += 1
    return np.minimum(alloc, counts)


def stratified_select(y: Any, n_select: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected, rest): sorted index tensors, selected has n_select items with per-class proportions kept."""
    labels = label_array(y)
    n = len(labels)
    if not 0 <= n_select <= n:
        raise ValueError(f"cannot select {n_select} of {n} samples")
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    alloc = _allocate(counts, n_select) if n else counts * 0
    rng = np.random.default_rng(int(seed))
    chosen = np.zeros(n, dtype=bool)
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        pick = rng.permutation(len(members))[: alloc[k]]
        chosen[members[pick]] = True
    selected = torch.from_numpy(np.flatnonzero(chosen).astype(np.int64))
    rest = torch.from_numpy(np.flatnonzero(~chosen).astype(np.int64))
    return selected, rest


def stratified_split(y: Any, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split → (train_idx, val_idx), sorted int64 tensors.

    ``fraction`` is the validation share in (0, 1) (an int >= 1 is taken as an absolute validation count).
    Each class contributes its share within rounding (largest-remainder allocation of round(fraction * N)).
    """
    n = len(label_array(y))
    if isinstance(fraction, (int, np.integer)) and not isinstance(fraction, bool) and fraction >= 1:
        n_val = int(fraction)
    elif 0.0 < float(fraction) < 1.0:
        n_val = int(round(float(fraction) * n))
    else:
        raise ValueError(f"fraction must be in (0, 1) or an integer count >= 1, got {fraction!r}")
    if n_val > n:
        raise ValueError(f"validation size {n_val} exceeds the {n} samples")
    val_idx, train_idx = stratified_select(y, n_val, seed)
    return train_idx, val_idx
