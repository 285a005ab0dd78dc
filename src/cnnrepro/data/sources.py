"""Where a dataset's images come from: torchvision's files (downloaded once by the workflow's download rule, then
read offline), npz files, or synthetic stand-ins. Each source gives the same in-memory form::

    {"train": (x, y), "test": (x, y)}    x: uint8 [N, C, H, W], y: int64 [N]

Nothing here reaches the network except ``download``, which is never called implicitly.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cnnrepro.data import declared
from cnnrepro.data.catalog import SPLITS, DatasetCorrupt, DatasetInfo, DatasetUnavailable
from cnnrepro.data.catalog import info as _info

SOURCES = ("torchvision", "npz", "synthetic", "imagefolder")


def _torchvision_class(info: DatasetInfo):
    import torchvision.datasets  # deferred: torchvision takes ~2 s to import, which only this source needs

    return getattr(torchvision.datasets, info.torchvision_class)


def _unavailable_message(info: DatasetInfo, root: str | os.PathLike, missing: Sequence[str] | None = None) -> str:
    root = Path(root)
    directory = root / info.folder
    lines = [
        f"{info.name}: the torchvision files are not available under {directory}.",
        f"torchvision.datasets.{info.torchvision_class}(root={str(root)!r}, download=False) expects these files:",
    ]
    missing_set = set(missing or ())
    for rel in info.raw_files:
        mark = "  (missing)" if rel in missing_set else ""
        lines.append(f"  {root / rel}{mark}")
    lines += [
        "How to get them:",
        f"  - on a machine with internet: python -c \"from cnnrepro.data.sources import download; "
        f"download({info.name!r}, {str(root)!r})\" (torchvision download, md5-checked for CIFAR archives);",
        f"  - or copy the folder {info.folder}/ from another machine that has it into {root}/.",
        "For offline work set the data source instead (config: data.source or data.datasets."
        f"{info.name}.source):",
        "  - 'npz': point data.datasets.<name>.npz.train / .test at npz files with keys x (uint8) and y;",
        "  - 'synthetic': small learnable stand-ins with the real shapes (smoke tests only, not real results).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# torchvision source
# ---------------------------------------------------------------------------------------------------------------------


def download(name: str, root: str | os.PathLike) -> None:
    """Download both splits through torchvision (needs internet). Raise DatasetUnavailable on failure."""
    info = _info(name)
    cls = _torchvision_class(info)
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as exc:  # URLError, OSError, md5 failures (RuntimeError), ...
        raise DatasetUnavailable(
            f"downloading {info.name} failed ({type(exc).__name__}: {exc}).\n" + _unavailable_message(info, root)
        ) from exc


def _missing_files(info: DatasetInfo, root: Path) -> list[str]:
    return [rel for rel in info.raw_files if not (root / rel).is_file()]


def _split_files(info: DatasetInfo, split: str) -> list[str]:
    """The files a split's data comes from (used to name the culprit in DatasetCorrupt)."""
    if info.torchvision_class in ("MNIST", "KMNIST"):
        prefix = "train" if split == "train" else "t10k"
        return [rel for rel in info.raw_files if Path(rel).name.startswith(prefix + "-")]
    if info.torchvision_class == "CIFAR10":
        wanted = "data_batch_" if split == "train" else "test_batch"
        return [rel for rel in info.raw_files if Path(rel).name.startswith(wanted)]
    return [rel for rel in info.raw_files if Path(rel).name == split]


def _diagnose_corrupt(info: DatasetInfo, root: Path, split: str) -> list[str]:
    """Best effort: which of the split's files fails to parse or fails its torchvision md5."""
    bad: list[str] = []
    if info.torchvision_class in ("MNIST", "KMNIST"):
        from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor  # deferred: torchvision (~2 s)

        for rel in _split_files(info, split):
            path = root / rel
            try:
                t = read_sn3_pascalvincent_tensor(str(path), strict=True)
                if t.ndim == 0 or t.shape[0] == 0:
                    bad.append(f"{path} (holds 0 samples)")
            except Exception as exc:
                size = path.stat().st_size if path.exists() else 0
                bad.append(f"{path} ({size} bytes; {type(exc).__name__}: {exc or 'unreadable'})")
    else:
        from torchvision.datasets.utils import check_integrity  # deferred: torchvision (~2 s)

        cls = _torchvision_class(info)
        expected = dict(cls.train_list + cls.test_list)
        expected[cls.meta["filename"]] = cls.meta["md5"]
        for rel in info.raw_files:
            fname = Path(rel).name
            if not check_integrity(str(root / rel), expected.get(fname)):
                bad.append(f"{root / rel} (md5 differs from torchvision's {expected.get(fname)})")
    return bad


def load_torchvision(name: str, root: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load both splits with torchvision (download=False) as uint8 NCHW / int64 tensors."""
    info = _info(name)
    root = Path(root)
    missing = _missing_files(info, root)
    if missing:
        raise DatasetUnavailable(_unavailable_message(info, root, missing))
    cls = _torchvision_class(info)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in SPLITS:
        files = _split_files(info, split)
        try:
            ds = cls(root=str(root), train=(split == "train"), download=False)
        except RuntimeError as exc:
            # All files exist, so "not found or corrupted" means a checksum failure (CIFAR md5).
            bad = _diagnose_corrupt(info, root, split) or [str(root / f) for f in files]
            raise DatasetCorrupt(
                f"{info.name} {split}: torchvision rejected the files ({exc}). Corrupt: {'; '.join(bad)}. "
                f"Delete them and download again (see cnnrepro.data.sources.download), or copy intact files."
            ) from exc
        except Exception as exc:  # ValueError/AssertionError/EOFError/UnpicklingError from a damaged file
            bad = _diagnose_corrupt(info, root, split) or [str(root / f) for f in files]
            raise DatasetCorrupt(
                f"{info.name} {split}: cannot read {'; '.join(bad)} ({type(exc).__name__}: {exc}). "
                f"The file is empty, truncated or damaged; replace it with an intact copy."
            ) from exc
        x, y = _torchvision_to_tensors(ds, info)
        n_expected = info.split_sizes.get(split)
        where = ", ".join(str(root / f) for f in files)
        if len(x) != len(y):
            raise DatasetCorrupt(f"{info.name} {split}: {len(x)} images but {len(y)} labels in {where}")
        if len(x) == 0:
            raise DatasetCorrupt(f"{info.name} {split}: 0 samples in {where} (empty placeholder?)")
        if n_expected is not None and len(x) != n_expected:
            raise DatasetCorrupt(
                f"{info.name} {split}: {len(x)} samples, expected {n_expected} in {where}. The files are "
                f"truncated or a subset; replace them with the complete files (subsets: data.subsample_*)."
            )
        check_arrays(info, split, x, y, where)
        out[split] = (x, y)
    return out


def _torchvision_to_tensors(ds: Any, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data
    if isinstance(data, np.ndarray):  # CIFAR: numpy uint8 [N, H, W, C]
        x = torch.from_numpy(np.ascontiguousarray(data))
    else:  # MNIST-like: uint8 tensor [N, H, W]
        x = torch.as_tensor(data)
    x = _to_nchw(x)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x.contiguous(), y


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    """[N,H,W] → [N,1,H,W]; [N,H,W,C] (C in 1, 3) → [N,C,H,W]."""
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] == x.shape[2]:  # HWC
        return x.permute(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[2] == x.shape[3]:  # already CHW
        return x
    raise ValueError(f"cannot interpret image array of shape {tuple(x.shape)} as [N,H,W] or [N,H,W,C]")


def check_arrays(info: DatasetInfo | None, split: str, x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    if x.dtype != torch.uint8:
        raise DatasetCorrupt(f"{split}: x dtype is {x.dtype}, expected uint8 ({where})")
    if x.ndim != 4:
        raise DatasetCorrupt(f"{split}: x has shape {tuple(x.shape)}, expected [N,C,H,W] ({where})")
    if len(x) != len(y):
        raise DatasetCorrupt(f"{split}: {len(x)} images but {len(y)} labels ({where})")
    if info is not None:
        want = (info.channels, info.size, info.size)
        if tuple(x.shape[1:]) != want:
            raise DatasetCorrupt(
                f"{info.name} {split}: images are {tuple(x.shape[1:])}, expected {want} ({where})"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise DatasetCorrupt(
                f"{info.name} {split}: labels outside 0..{info.num_classes - 1} "
                f"(min {int(y.min())}, max {int(y.max())}) ({where})"
            )


# ---------------------------------------------------------------------------------------------------------------------
# npz source
# ---------------------------------------------------------------------------------------------------------------------


def _npz_shapes(info: DatasetInfo | None) -> str:
    """The x layouts an npz file may hold, for ``info``'s images or any."""
    if info is None:
        return "[N,H,W], [N,H,W,C] or [N,C,H,W] (C 1 or 3)"
    c, s = info.channels, info.size
    layouts = [f"[N,{s},{s}]"] if c == 1 else []
    return " or ".join([*layouts, f"[N,{s},{s},{c}]", f"[N,{c},{s},{s}]"]) + f" for {info.name}"


def load_npz(paths: Mapping[str, str | os.PathLike],
             name: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load split → npz (keys x uint8 [N,28,28] or [N,32,32,3], y integer labels [N]) as uint8 NCHW / int64 tensors.

    With ``name`` (a dataset), x must hold that dataset's images and y its class indices; every problem is a
    DatasetCorrupt naming the file, the array and what was expected.
    """
    info = _info(name) if name is not None else None
    shapes = _npz_shapes(info)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, path in paths.items():
        path = Path(path)
        if not path.is_file():
            raise DatasetUnavailable(
                f"npz file for split {split!r} not found: {path}. Point the npz option at an existing file "
                f"with keys x (uint8 {shapes}) and y, or use source 'torchvision' or 'synthetic'."
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "x" not in npz.files or "y" not in npz.files:
                    raise DatasetCorrupt(f"{path}: needs keys 'x' and 'y', found {sorted(npz.files)}")
                x_np = npz["x"]
                y_np = npz["y"]
        except DatasetCorrupt:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise DatasetCorrupt(
                f"{path}: not a readable npz file ({type(exc).__name__}: {exc}); replace it with an intact copy"
            ) from exc
        if x_np.dtype != np.uint8:
            raise DatasetCorrupt(f"{path}: x dtype is {x_np.dtype}, expected uint8 (pixels 0..255)")
        if y_np.ndim != 1:
            raise DatasetCorrupt(f"{path}: y shape {tuple(y_np.shape)} is not [N]; expected one class index per image")
        if not np.issubdtype(y_np.dtype, np.integer):
            raise DatasetCorrupt(f"{path}: y dtype is {y_np.dtype}, expected integer class indices")
        if len(x_np) != len(y_np):
            raise DatasetCorrupt(f"{path}: {len(x_np)} images (x) but {len(y_np)} labels (y); expected one label "
                                 "per image")
        if len(x_np) == 0:
            raise DatasetCorrupt(f"{path}: holds 0 samples")
        try:
            x = _to_nchw(torch.from_numpy(np.ascontiguousarray(x_np))).contiguous()
        except ValueError:
            x = None
        if x is None or (info is not None and tuple(x.shape[1:]) != (info.channels, info.size, info.size)):
            raise DatasetCorrupt(f"{path}: x shape {tuple(x_np.shape)} is not {shapes}")
        y = torch.from_numpy(y_np.astype(np.int64))
        if info is not None and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise DatasetCorrupt(f"{path}: y holds labels {int(y.min())} .. {int(y.max())}, expected class indices "
                                 f"0 .. {info.num_classes - 1} for {info.name}")
        out[split] = (x, y)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# synthetic source
# ---------------------------------------------------------------------------------------------------------------------


def _smooth_templates(num_classes: int, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """One smooth low-frequency pattern per class, float in [0, 255], shape [K, C, S, S]."""
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    finer = torch.rand(num_classes, channels, 7, 7, generator=gen)
    up = torch.nn.functional.interpolate
    pattern = 0.7 * up(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pattern = pattern + 0.3 * up(finer, size=(size, size), mode="bicubic", align_corners=False)
    lo = pattern.amin(dim=(1, 2, 3), keepdim=True)
    hi = pattern.amax(dim=(1, 2, 3), keepdim=True)
    pattern = (pattern - lo) / (hi - lo).clamp_min(1e-6)
    return 30.0 + 195.0 * pattern


def _synthetic_split(templates: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = templates.shape[0]
    y = torch.arange(n, dtype=torch.int64) % k  # balanced: counts differ by at most one
    y = y[torch.randperm(n, generator=gen)]
    x = templates[y].clone()
    # per-sample brightness/contrast jitter, small shifts, pixel noise
    gain = 1.0 + 0.1 * torch.randn(n, 1, 1, 1, generator=gen)
    offset = 8.0 * torch.randn(n, 1, 1, 1, generator=gen)
    x = (x - 127.5) * gain + 127.5 + offset
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    for dy in range(-2, 3):  # 25 shift groups instead of a per-sample loop
        for dx in range(-2, 3):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                x[sel] = torch.roll(x[sel], shifts=(dy, dx), dims=(2, 3))
    x = x + 20.0 * torch.randn(x.shape, generator=gen)
    return x.round().clamp(0, 255).to(torch.uint8).contiguous(), y


def make_synthetic(
    name: str | DatasetInfo, n_train: int, n_test: int, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic, learnable stand-in data with the real shapes and class count of ``name`` (a built-in dataset,
    or a declared one's DatasetInfo).

    Each class has a fixed smooth random template; samples add brightness jitter, ±2 px shifts and noise.
    """
    info = name if isinstance(name, DatasetInfo) else _info(name)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"synthetic sizes must be positive, got n_train={n_train}, n_test={n_test}")
    gen = torch.Generator().manual_seed(int(seed))
    templates = _smooth_templates(info.num_classes, info.channels, info.size, gen)
    train = _synthetic_split(templates, int(n_train), gen)
    test = _synthetic_split(templates, int(n_test), gen)
    return {"train": train, "test": test}


# ---------------------------------------------------------------------------------------------------------------------
# a declared torchvision dataset (cnnrepro.data.declared)
# ---------------------------------------------------------------------------------------------------------------------


def _declared_message(declaration: Mapping[str, Any], root: str | os.PathLike) -> str:
    return (f"torchvision.datasets.{declaration['class']} (root={str(root)!r}, {declaration.get('args') or {}}) "
            "needs its files under data_root: the workflow's download_declared_dataset rule fetches them on a machine "
            "with internet (or cnnrepro download <name>), or copy torchvision's folder for it from a machine that has "
            "it into data_root; for offline work set the dataset's source to synthetic (stand-ins of its shapes)")


def download_declared(declaration: Mapping[str, Any], root: str | os.PathLike) -> None:
    """Download a declared torchvision dataset's splits (needs internet); DatasetUnavailable on failure."""
    cls = declared.torchvision_class(declaration["class"])
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        for kwargs in declared.split_arguments(declaration).values():
            cls(root=str(root), download=True, **kwargs)
    except Exception as exc:  # URLError, OSError, checksum failures (RuntimeError), ...
        raise DatasetUnavailable(f"downloading {declaration['class']} failed ({type(exc).__name__}: {exc}). "
                                 + _declared_message(declaration, root)) from exc


def open_declared(declaration: Mapping[str, Any], root: str | os.PathLike) -> dict[str, Any]:
    """A declared torchvision dataset's splits as torchvision's dataset objects, read offline."""
    cls = declared.torchvision_class(declaration["class"])
    out = {}
    for split, kwargs in declared.split_arguments(declaration).items():
        try:
            out[split] = cls(root=str(root), download=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - "Dataset not found or corrupted" and the like
            raise DatasetUnavailable(f"{declaration['class']} {split}: {type(exc).__name__}: {exc}. "
                                     + _declared_message(declaration, root)) from exc
    return out


def torchvision_arrays(dataset: Any) -> tuple[torch.Tensor | None, np.ndarray]:
    """(images as uint8 [N, C, H, W], or None when the dataset keeps them as files; labels) of a torchvision
    dataset object, without going through its per-image transforms."""
    labels = declared.torchvision_labels(dataset)
    if labels is None:
        raise DatasetCorrupt(f"{type(dataset).__name__}: no labels to read (targets, labels, _labels or samples)")
    data = getattr(dataset, "data", None)
    if data is None or getattr(data, "ndim", 0) not in (3, 4):
        return None, labels
    x = torch.as_tensor(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else torch.as_tensor(data)
    if x.dtype != torch.uint8:
        return None, labels
    return _to_nchw(x).contiguous(), labels
