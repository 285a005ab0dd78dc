"""The run's data on the training device: uint8 splits, indexed and transformed per batch there."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnrepro import augment, datasets


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
        return datasets.read_compact(data_path)
    except datasets.DatasetCorrupt as error:
        Path(data_path).unlink(missing_ok=True)
        Path(f"{data_path}.json").unlink(missing_ok=True)
        raise datasets.DatasetCorrupt(f"{error}. Removed {data_path} and its sidecar: rerun snakemake, which "
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
        train_idx, val_idx = datasets.stratified_split(train_y, settings["val_fraction"], settings["seed"])
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
