"""The compact dataset file training reads: both splits as uint8 tensors in one ``.pt`` file, and a sidecar
``.pt.json`` with its sha256, per-split counts and class counts, and where the data came from. It is read
memory-mapped and verified against its sha256 (a corrupt file is never trained on)."""

from __future__ import annotations

import contextlib
import mmap
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
    splits: dict[str, dict[str, torch.Tensor]] = {}
    for split, (x, y) in data.items():
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        check_arrays(None, split, x, y, str(path))
        # clone: a view would otherwise drag its whole parent storage into the file
        splits[split] = {"x": x.detach().cpu().clone().contiguous(), "y": y.detach().cpu().to(torch.int64).clone()}
    return _save(splits, Path(path), dict(meta))


def _save(splits: dict[str, dict[str, torch.Tensor]], path: Path, meta: dict) -> dict:
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


class MappedWriter:
    """A compact file written image by image, never whole in memory (a dataset larger than RAM): each split's
    images go into a file-backed tensor, a shared memory map of a temporary file beside the output, which the page
    cache holds instead of the process; saving copies them into the compact file page by page and removes the
    temporary files. The file records ``mapped``: it is read through a shared map too (:func:`read_compact`).

    Use as a context manager: the temporary files go whether or not it is closed."""

    def __init__(self, path: str | os.PathLike, counts: Mapping[str, int], channels: int, size: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.x: dict[str, torch.Tensor] = {}
        self.y: dict[str, torch.Tensor] = {}
        self._temporary: list[Path] = []
        for split, count in counts.items():
            temporary = self.path.with_name(f".{self.path.name}.{split}.tmp")
            numel = count * channels * size * size
            with open(temporary, "wb") as handle:
                handle.truncate(numel)  # sparse: the disk fills as images are written
            self._temporary.append(temporary)
            self.x[split] = torch.from_file(str(temporary), shared=True, size=numel, dtype=torch.uint8).view(
                count, channels, size, size)
            self.y[split] = torch.empty(count, dtype=torch.int64)

    def __enter__(self) -> "MappedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.x.clear()
        for temporary in self._temporary:
            temporary.unlink(missing_ok=True)

    def close(self, meta: Mapping[str, Any]) -> dict:
        """Save the compact file and its sidecar (meta records that it is read mapped); return the sidecar."""
        splits = {split: {"x": self.x[split], "y": self.y[split]} for split in self.x}
        for split, s in splits.items():
            check_arrays(None, split, s["x"], s["y"], str(self.path))
        return _save(splits, self.path, {**meta, "mapped": True})


def _is_mapped(path: Path) -> bool:
    """Whether the file was written by MappedWriter (its sidecar says so): read it through a shared map."""
    try:
        return bool(read_json(_sidecar_path(path)).get("meta", {}).get("mapped"))
    except (OSError, ValueError, AttributeError):
        return False


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
        # keeps in-place changes out of the file. A file written mapped (a declared dataset, maybe larger than RAM)
        # is mapped shared: a private writable map counts the whole file against the job's memory (RLIMIT_DATA), a
        # shared one leaves it to the page cache. Nothing writes into a split's tensors.
        shared = contextlib.nullcontext()
        if _is_mapped(path) and os.access(path, os.W_OK):
            shared = torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)
        with shared:
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
