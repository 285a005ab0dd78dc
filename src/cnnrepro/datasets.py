"""Datasets: torchvision / npz / synthetic sources, turned into one compact, checksummed file.

Every source is converted to the same in-memory form::

    {"train": (x, y), "test": (x, y)}    x: uint8 [N, C, H, W], y: int64 [N]

and ``prepare`` (the entry point of the Snakemake rule) writes that as a compact ``.pt`` file plus a sidecar
``.pt.json`` holding its sha256, the per-split counts and class counts, and provenance metadata. Training code reads
the compact file with ``read_compact`` and never touches the original sources again.

Nothing here reaches the network except ``download``, which is never called implicitly.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cnnrepro.io import atomic_path, read_json, sha256_file, torch_save, write_json

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetUnavailable",
    "DatasetCorrupt",
    "SOURCES",
    "download",
    "load_torchvision",
    "load_npz",
    "make_synthetic",
    "subsample",
    "stratified_split",
    "write_compact",
    "read_compact",
    "class_distribution",
    "plot_class_distribution",
    "prepare",
    "prepare_files",
]

log = logging.getLogger("cnnrepro.datasets")

SPLITS = ("train", "test")
SOURCES = ("torchvision", "npz", "synthetic")


class DatasetUnavailable(RuntimeError):
    """The files a source needs are not on disk (and could not be fetched)."""


class DatasetCorrupt(RuntimeError):
    """A file exists but is empty, truncated, fails its checksum or holds fewer samples than it should."""


# ---------------------------------------------------------------------------------------------------------------------
# Dataset descriptions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    torchvision_class: str
    channels: int
    size: int
    num_classes: int
    classes: tuple[str, ...]
    raw_files: tuple[str, ...]  # relative to the torchvision root folder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_sizes: Mapping[str, int] = field(default_factory=dict)  # full torchvision split sizes

    @property
    def folder(self) -> str:
        """The folder under ``root`` that torchvision reads (``MNIST/raw``, ``cifar-10-batches-py``, ...)."""
        return str(Path(self.raw_files[0]).parent)


_MNIST_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# torchvision.datasets.MNIST.classes / KMNIST.classes (checked against torchvision in the tests).
_MNIST_CLASSES = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)
_KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
# batches.meta label_names
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# meta fine_label_names (alphabetical, as stored in cifar-100-python/meta)
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class="MNIST",
        channels=1,
        size=28,
        num_classes=10,
        classes=_MNIST_CLASSES,
        raw_files=tuple(f"MNIST/raw/{f}" for f in _MNIST_RAW),
        # seed 000 (its --norm mnist)
        mean=(0.1307,),
        std=(0.3081,),
        split_sizes={"train": 60000, "test": 10000},
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        torchvision_class="KMNIST",
        channels=1,
        size=28,
        num_classes=10,
        classes=_KMNIST_CLASSES,
        raw_files=tuple(f"KMNIST/raw/{f}" for f in _MNIST_RAW),
        # Seed 003 uses x/255 without mean/std normalisation; these are the commonly quoted KMNIST train
        # statistics, for recipes that do normalise.
        mean=(0.1918,),
        std=(0.3483,),
        split_sizes={"train": 60000, "test": 10000},
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        torchvision_class="CIFAR10",
        channels=3,
        size=32,
        num_classes=10,
        classes=_CIFAR10_CLASSES,
        raw_files=tuple(
            f"cifar-10-batches-py/{f}"
            for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        ),
        # the true dataset std (seed 001); seed 002's code uses std (0.2023, 0.1994, 0.2010), see config.yaml.
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        split_sizes={"train": 50000, "test": 10000},
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        torchvision_class="CIFAR100",
        channels=3,
        size=32,
        num_classes=100,
        classes=_CIFAR100_CLASSES,
        raw_files=("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        # the CIFAR-100 statistics (seed 002 reuses the CIFAR-10 constants instead).
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        split_sizes={"train": 50000, "test": 10000},
    ),
}


def _info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}") from None


def _torchvision_class(info: DatasetInfo):
    import torchvision.datasets

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
        f"  - on a machine with internet: python -c \"from cnnrepro.datasets import download; "
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
        from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

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
        from torchvision.datasets.utils import check_integrity

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
                f"Delete them and download again (see cnnrepro.datasets.download), or copy intact files."
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
        _check_arrays(info, split, x, y, where)
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


def _check_arrays(info: DatasetInfo | None, split: str, x: torch.Tensor, y: torch.Tensor, where: str) -> None:
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
    name: str, n_train: int, n_test: int, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic, learnable stand-in data with the real shapes and class count of ``name``.

    Each class has a fixed smooth random template; samples add brightness jitter, ±2 px shifts and noise.
    """
    info = _info(name)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"synthetic sizes must be positive, got n_train={n_train}, n_test={n_test}")
    gen = torch.Generator().manual_seed(int(seed))
    templates = _smooth_templates(info.num_classes, info.channels, info.size, gen)
    train = _synthetic_split(templates, int(n_train), gen)
    test = _synthetic_split(templates, int(n_test), gen)
    return {"train": train, "test": test}


# ---------------------------------------------------------------------------------------------------------------------
# subsets and splits
# ---------------------------------------------------------------------------------------------------------------------


def _as_label_array(y: Any) -> np.ndarray:
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


def _stratified_select(y: Any, n_select: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected, rest): sorted index tensors, selected has n_select items with per-class proportions kept."""
    labels = _as_label_array(y)
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
    n = len(_as_label_array(y))
    if isinstance(fraction, (int, np.integer)) and not isinstance(fraction, bool) and fraction >= 1:
        n_val = int(fraction)
    elif 0.0 < float(fraction) < 1.0:
        n_val = int(round(float(fraction) * n))
    else:
        raise ValueError(f"fraction must be in (0, 1) or an integer count >= 1, got {fraction!r}")
    if n_val > n:
        raise ValueError(f"validation size {n_val} exceeds the {n} samples")
    val_idx, train_idx = _stratified_select(y, n_val, seed)
    return train_idx, val_idx


def subsample(
    data: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stratified, deterministic subset of each split (None, or n >= the split size, keeps it whole)."""
    wanted = {"train": n_train, "test": n_test}
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, (x, y) in data.items():
        n = wanted.get(split)
        if n is None or int(n) >= len(y):
            out[split] = (x, y)
            continue
        if int(n) < 1:
            raise ValueError(f"subsample size for {split} must be >= 1, got {n}")
        idx, _ = _stratified_select(y, int(n), seed)
        out[split] = (x[idx].contiguous(), y[idx].contiguous())
    return out


# ---------------------------------------------------------------------------------------------------------------------
# compact file
# ---------------------------------------------------------------------------------------------------------------------


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
        _check_arrays(None, split, x, y, str(path))
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


# ---------------------------------------------------------------------------------------------------------------------
# class distribution (seed 003, Q2)
# ---------------------------------------------------------------------------------------------------------------------


def class_distribution(data_or_compact: Mapping[str, Any], classes: Sequence[str] | None = None):
    """Long-form class counts: columns split, class_index, class_name, count (zero counts included).

    Accepts the split dict {split: (x, y)}, a compact dict from read_compact, or a sidecar dict from write_compact.
    """
    import pandas as pd

    obj = data_or_compact
    meta: Mapping[str, Any] = {}
    counts: dict[str, np.ndarray] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("splits"), Mapping):
        meta = obj.get("meta") or {}
        for split, s in obj["splits"].items():
            if "class_counts" in s:  # sidecar
                counts[split] = np.asarray(s["class_counts"], dtype=np.int64)
            else:
                counts[split] = np.bincount(_as_label_array(s["y"]))
    else:
        for split, (_, y) in obj.items():
            counts[split] = np.bincount(_as_label_array(y))
    if classes is None:
        classes = meta.get("classes")
    if classes is None and meta.get("dataset") in DATASETS:
        classes = DATASETS[meta["dataset"]].classes
    n_classes = max([len(classes) if classes is not None else 0] + [len(c) for c in counts.values()])
    rows = []
    for split, c in counts.items():
        c = np.pad(c, (0, n_classes - len(c)))
        for k in range(n_classes):
            name = str(classes[k]) if classes is not None and k < len(classes) else str(k)
            rows.append({"split": split, "class_index": k, "class_name": name, "count": int(c[k])})
    return pd.DataFrame(rows, columns=["split", "class_index", "class_name", "count"])


def plot_class_distribution(df, path: str | os.PathLike, title: str | None = None) -> Path:
    """Grouped bar chart of ``class_distribution`` output, one bar colour per split; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    splits = list(dict.fromkeys(df["split"]))
    table = df.pivot_table(index=["class_index", "class_name"], columns="split", values="count", aggfunc="sum")
    table = table.sort_index(level=0).fillna(0)
    labels = [name for _, name in table.index]
    n = len(labels)
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * n * max(len(splits), 1) + 2), 4))
    try:
        pos = np.arange(n)
        for i, split in enumerate(splits):
            ax.bar(pos + (i - (len(splits) - 1) / 2) * width, table[split].to_numpy(), width, label=split)
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, rotation=90 if n > 10 or max(map(len, labels), default=0) > 6 else 0)
        ax.set_xlabel("class")
        ax.set_ylabel("images")
        ax.set_title(title or "class distribution per split")
        ax.legend(title="split")
        fig.tight_layout()
        supported = fig.canvas.get_supported_filetypes()
        # the format comes from the last known suffix, so temp names like ".plot.png.x1y2.tmp" work too
        fmt = next((suf[1:].lower() for suf in reversed(path.suffixes) if suf[1:].lower() in supported), "png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# entry point for the Snakemake rule
# ---------------------------------------------------------------------------------------------------------------------


def prepare(
    name: str, source: str, root: str | os.PathLike, out_path: str | os.PathLike, options: Mapping[str, Any]
) -> dict:
    """Load ``name`` from ``source``, carve/subsample as configured, write the compact file; return the sidecar.

    ``options`` are the dataset's data settings (cnnrepro.config.data_settings), complete with the schema's
    defaults: seed, npz, synthetic_train/test, split_test_from_train, subsample_train/test.
    """
    info = _info(name)
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    seed = int(options["seed"])
    meta: dict[str, Any] = {
        "dataset": info.name,
        "source": source,
        "classes": list(info.classes),
        "num_classes": info.num_classes,
        "channels": info.channels,
        "size": info.size,
        "mean": list(info.mean),
        "std": list(info.std),
        "seed": seed,
    }

    if source == "torchvision":
        import torchvision

        data = load_torchvision(name, root)
        meta.update(
            root=str(root),
            torchvision_class=info.torchvision_class,
            torchvision_version=torchvision.__version__,
        )
    elif source == "npz":
        paths = options["npz"] or {}
        if not paths or "train" not in paths:
            raise ValueError(f"{name}: source 'npz' needs options['npz'] = {{'train': path, 'test': path}}")
        data = load_npz(paths, name)
        for split, (x, y) in data.items():
            _check_arrays(info, split, x, y, str(paths[split]))
        meta["npz"] = {split: {"path": str(p), "sha256": sha256_file(p)} for split, p in paths.items()}
    else:
        n_train, n_test = int(options["synthetic_train"]), int(options["synthetic_test"])
        data = make_synthetic(name, n_train, n_test, seed)
        meta["synthetic"] = {"n_train": n_train, "n_test": n_test, "seed": seed,
                             "note": "synthetic stand-in data; not a reproduction of any published number"}

    meta["original_counts"] = {split: len(y) for split, (_, y) in data.items()}

    n_carve = options["split_test_from_train"]
    if n_carve is not None:
        if "test" in data:
            raise ValueError(
                f"{name}: split_test_from_train={n_carve} given, but the {source} source already has a test split"
            )
        x, y = data["train"]
        train_idx, test_idx = stratified_split(y, n_carve, seed)
        data = {"train": (x[train_idx], y[train_idx]), "test": (x[test_idx], y[test_idx])}
        meta["split_test_from_train"] = {
            "n_test": int(len(test_idx)), "n_train": int(len(train_idx)), "seed": seed, "stratified": True,
            "note": "the test split was carved from the training data; it is not the dataset's official test set",
        }
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise ValueError(
            f"{name}: the {source} source has no {', '.join(missing)} split; give it one or set split_test_from_train"
        )

    n_sub_train, n_sub_test = options["subsample_train"], options["subsample_test"]
    if n_sub_train is not None or n_sub_test is not None:
        data = subsample(data, n_sub_train, n_sub_test, seed)
        meta["subsample"] = {"train": n_sub_train, "test": n_sub_test, "seed": seed, "stratified": True}

    return write_compact({s: data[s] for s in SPLITS}, out_path, meta)


def prepare_files(name: str, settings: Mapping[str, Any], root: str | os.PathLike, out: str | os.PathLike,
                  classes_csv: str | os.PathLike, plot: str | os.PathLike) -> dict:
    """The prepare_dataset rule: the compact file, then its class counts as a CSV and a bar chart."""
    sidecar = prepare(name, settings["source"], root, out, settings)
    log.info("wrote %s (sha256 %s)", out, sidecar["sha256"])
    table = class_distribution(sidecar)  # its class counts are the file's: no need to read the file back
    with atomic_path(classes_csv) as tmp:
        table.to_csv(tmp, index=False)
    plot_class_distribution(table, plot)
    return sidecar
