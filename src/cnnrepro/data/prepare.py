"""The workflow's prepare job: a dataset from its source, carved and subsampled as configured, written as the
compact file training reads, with its class counts as a CSV and a bar chart."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from cnnrepro.data.catalog import DATASETS, SPLITS
from cnnrepro.data.catalog import info as _info
from cnnrepro.data.compact import write_compact
from cnnrepro.data.sources import SOURCES, check_arrays, load_npz, load_torchvision, make_synthetic
from cnnrepro.data.splits import label_array, stratified_select, stratified_split
from cnnrepro.runtime.io import atomic_path, sha256_file

log = logging.getLogger(__name__)


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
        idx, _ = stratified_select(y, int(n), seed)
        out[split] = (x[idx].contiguous(), y[idx].contiguous())
    return out


def class_distribution(data_or_compact: Mapping[str, Any], classes: Sequence[str] | None = None):
    """Long-form class counts: columns split, class_index, class_name, count (zero counts included).

    Accepts the split dict {split: (x, y)}, a compact dict from read_compact, or a sidecar dict from write_compact.
    """
    obj = data_or_compact
    meta: Mapping[str, Any] = {}
    counts: dict[str, np.ndarray] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("splits"), Mapping):
        meta = obj.get("meta") or {}
        for split, s in obj["splits"].items():
            if "class_counts" in s:  # sidecar
                counts[split] = np.asarray(s["class_counts"], dtype=np.int64)
            else:
                counts[split] = np.bincount(label_array(s["y"]))
    else:
        for split, (_, y) in obj.items():
            counts[split] = np.bincount(label_array(y))
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
    import matplotlib  # deferred: matplotlib, which only the prepare job's bar chart needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib, after its backend is set

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
        import torchvision  # deferred: torchvision takes ~2 s to import, which only this source needs

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
            check_arrays(info, split, x, y, str(paths[split]))
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


def split_counts(dataset: str, data_settings: dict) -> dict[str, int]:
    """Images in the compact dataset's train and test splits, as ``prepare`` makes them."""
    info = DATASETS[dataset]
    source = data_settings["source"]
    if source == "synthetic":
        train, test = data_settings["synthetic_train"], data_settings["synthetic_test"]
    elif source == "npz":
        train, test = _npz_count(data_settings["npz"]["train"]), None
        if data_settings["npz"].get("test"):
            test = _npz_count(data_settings["npz"]["test"])
    else:
        train, test = info.split_sizes["train"], info.split_sizes["test"]
    carve = data_settings.get("split_test_from_train")
    if carve:
        train, test = train - carve, carve
    test = test if test is not None else info.split_sizes["test"]
    caps = (data_settings["subsample_train"], data_settings["subsample_test"])
    return {"train": min(train, caps[0] or train), "test": min(test, caps[1] or test)}


@functools.lru_cache(maxsize=32)
def _npz_count(path: str) -> int:
    try:
        with np.load(path) as data:
            return len(data["y"])
    except (OSError, KeyError, ValueError):
        return 0
