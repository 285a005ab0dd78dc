"""The compact dataset file training reads: both splits as uint8 tensors in one ``.pt`` file, and a sidecar
``.pt.json`` with its sha256, per-split counts and class counts, and where the data came from. It is read
memory-mapped and verified against its sha256 (a corrupt file is never trained on)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from cnnrepro.data.catalog import DATASETS, DatasetCorrupt, DatasetUnavailable
from cnnrepro.data.sources import check_arrays
from cnnrepro.runtime.io import read_json, sha256_file, torch_save, write_json


def _sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def _num_classes_for(meta: Mapping[str, Any], ys: Sequence[torch.Tensor]) -> int:
    if meta.get("num_classes"):
        return int(meta["num_classes"])
    if meta.get("dataset") in DATASETS:
        return DATASETS[meta["dataset"]].num_classes
    return max((int(y.max()) + 1 for y in ys if len(y)), default=0)


def write_compact(
    data: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | os.PathLike, meta: Mapping[str, Any]
) -> dict:
    """Save the splits atomically as a .pt file plus a sidecar ``path + '.json'``; return the sidecar dict."""
    path = Path(path)
    meta = dict(meta)
    splits: dict[str, dict[str, torch.Tensor]] = {}
    for split, (x, y) in data.items():
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        check_arrays(None, split, x, y, str(path))
        # clone: a view would otherwise drag its whole parent storage into the file
        splits[split] = {"x": x.detach().cpu().clone().contiguous(), "y": y.detach().cpu().to(torch.int64).clone()}
    num_classes = _num_classes_for(meta, [s["y"] for s in splits.values()])
    torch_save({"splits": splits, "meta": meta}, path)
    sidecar = {
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "num_classes": num_classes,
        "splits": {
            split: {
                "count": len(s["y"]),
                "class_counts": torch.bincount(s["y"], minlength=num_classes).tolist(),
                "x_shape": list(s["x"].shape),
                "x_dtype": str(s["x"].dtype).removeprefix("torch."),
                "y_dtype": str(s["y"].dtype).removeprefix("torch."),
            }
            for split, s in splits.items()
        },
        "meta": meta,
    }
    write_json(_sidecar_path(path), sidecar)
    return sidecar


def read_compact(path: str | os.PathLike, verify: bool = True) -> dict:
    """Load a compact file ({"splits": {split: {"x", "y"}}, "meta"}); verify its sha256 against the sidecar."""
    path = Path(path)
    fix = "delete it and rerun snakemake to rebuild"
    if not path.is_file():
        raise DatasetUnavailable(f"compact dataset file not found: {path}; run snakemake to build it")
    if verify:
        side = _sidecar_path(path)
        if not side.is_file():
            raise DatasetCorrupt(f"{path}: sidecar {side.name} is missing, cannot verify the file; {fix}")
        try:
            expected = read_json(side)["sha256"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetCorrupt(f"{path}: sidecar {side.name} is unreadable ({exc}); {fix}") from exc
        actual = sha256_file(path)
        if actual != expected:
            raise DatasetCorrupt(
                f"{path}: sha256 {actual} does not match {expected} recorded in {side.name} "
                f"(file changed or truncated); {fix}"
            )
    try:
        # Mapped, not read: a job touches only the pages it uses (a benchmark, 20 test images), and copy-on-write
        # keeps in-place changes out of the file.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise DatasetCorrupt(f"{path}: cannot be loaded ({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("splits"), dict):
        raise DatasetCorrupt(f"{path}: not a cnnrepro compact dataset file; {fix}")
    for split, s in obj["splits"].items():
        x, y = s.get("x"), s.get("y")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DatasetCorrupt(f"{path}: split {split!r} lacks x/y tensors; {fix}")
        if x.dtype != torch.uint8:
            raise DatasetCorrupt(f"{path}: split {split!r} x dtype is {x.dtype}, expected uint8; {fix}")
        if len(x) != len(y):
            raise DatasetCorrupt(f"{path}: split {split!r} has {len(x)} images but {len(y)} labels; {fix}")
    obj.setdefault("meta", {})
    return obj
