"""The run's data on the training device: uint8 splits, indexed and transformed per batch there; the stratified
selections that carve a validation split (and subsample a dataset when it is prepared)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnrepro.data import augment
from cnnrepro.data.catalog import DatasetCorrupt
from cnnrepro.data.compact import read_compact


class Split:
    """One split on the device: uint8 images (or cached features), labels, and the batch transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform, device: torch.device):
        self.x = x.to(device)
        self.y = y.to(device)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None, train: bool):
        n = len(self)
        order = (torch.randperm(n, generator=generator, device=self.x.device) if train
                 else torch.arange(n, device=self.x.device))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.transform(self.x[idx], generator, train), self.y[idx]


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


def batch_transform(settings: dict, device: torch.device, augment_name: str | None = None):
    """The run's on-device batch transform (input adaptation, augmentation, normalisation)."""
    inp = settings["input"]
    spec = {"rgb": inp["rgb"], "input_size": inp["size"], "augment": augment_name or settings["augment"],
            "mean": inp["mean"], "std": inp["std"], "channels_last": settings["speed"]["channels_last"]}
    return augment.build_batch_transform(spec, device)


def build_splits(settings: dict, data: dict, device: torch.device, generator: torch.Generator) -> dict:
    """train / eval / test splits as the study defines them (validation split or test-as-validation)."""
    train_x, train_y = data["splits"]["train"]["x"], data["splits"]["train"]["y"]
    test_x, test_y = data["splits"]["test"]["x"], data["splits"]["test"]["y"]
    transform = batch_transform(settings, device)
    val = None
    if settings["eval_split"] == "val":
        train_idx, val_idx = stratified_split(train_y, settings["val_fraction"], settings["seed"])
        val = (train_x[val_idx], train_y[val_idx])
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    if augment.AUGMENTATIONS[settings["augment"]].copies:
        # A fixed augmented set, generated once, replaces the originals (seed 003's Keras expansion).
        train_x, train_y = augment.augment_copies(train_x.to(device), train_y.to(device),
                                                  settings["augment_copies"], generator)
    splits = {"train": Split(train_x, train_y, transform, device),
              "test": Split(test_x, test_y, transform, device)}
    splits["eval"] = Split(*val, transform, device) if val is not None else splits["test"]
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
