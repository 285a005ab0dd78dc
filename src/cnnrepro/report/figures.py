"""The report's figures drawn: one figure of a study (cnnrepro.report.figure_plan says which) from exactly the
files the workflow hands over, written as PNG (for the HTML pages) and PDF (for LaTeX)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch

from cnnrepro import models
from cnnrepro.config import BenchKey
from cnnrepro.data.catalog import DATASETS
from cnnrepro.report.figure_plan import KIND_TITLES, Figure, read_published
from cnnrepro.runtime import io
from cnnrepro.tables.select import selects
from cnnrepro.tables.summary import bench_identity, summarize

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

log = logging.getLogger(__name__)

PathLike = str | Path

HISTORY_COLUMNS = ("train_loss", "eval_loss", "train_acc", "eval_acc", "lr")
COLUMN_TITLES = {"train_loss": "training loss", "eval_loss": "evaluation loss", "train_acc": "training accuracy",
                 "eval_acc": "evaluation accuracy", "lr": "learning rate"}
# One colour per registered model (registry order), the same in every figure of every study: tab10 without its
# grey (black and grey mark published curves and Pareto fronts), then four more chosen so that the models one
# study compares (seed 002's five, seed 001's two) stay apart; later registrations cycle through them again.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#e6550d", "#31a354", "#7b4173")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
HATCHES = ("", "//", "..", "xx", "\\\\", "oo")
DATASET_MARKERS = ("o", "s", "^", "D", "v", "P")


# =====================================================================================================================
# reading runs
# =====================================================================================================================


@dataclass
class RunData:
    run_id: str
    record: dict
    history: pd.DataFrame | None = None

    @property
    def settings(self) -> dict:
        return self.record["settings"]

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"


def read_history(path: PathLike) -> pd.DataFrame:
    """history.csv as numbers; an empty cell (an epoch not evaluated) is NaN."""
    frame = pd.read_csv(path)
    for column in ("epoch", *HISTORY_COLUMNS):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def load_runs(run_ids: Sequence[str], metrics: Sequence[PathLike],
              histories: Sequence[PathLike] | None = None) -> list[RunData]:
    """The runs in ``run_ids`` order; each metrics file must be the run it stands for."""
    if len(metrics) != len(run_ids) or (histories is not None and len(histories) != len(run_ids)):
        raise ValueError(f"expected one metrics (and history) file per run: {len(run_ids)} runs, {len(metrics)} "
                         f"metrics files, {len(histories) if histories is not None else 0} histories")
    out = []
    for k, (run_id, path) in enumerate(zip(run_ids, metrics)):
        record = io.read_json(path)
        if record.get("run_id") != run_id:
            raise ValueError(f"{path} holds run {record.get('run_id')}, expected {run_id}")
        out.append(RunData(run_id, record, read_history(histories[k]) if histories is not None else None))
    return out


# A configuration is what a line or a bar stands for: a run without its seed.
def _config_key(settings: dict) -> tuple:
    return (settings["dataset"], settings["model"], settings["freeze"], settings["variant"])


def _grid_text(grid: Mapping[str, Any], varying: Iterable[str]) -> str:
    return ", ".join(f"{key.split('.')[-1]} {grid[key]}" for key in grid if key in varying)


def series_labels(runs: Sequence[RunData], multiline: bool = False) -> dict[tuple, str]:
    """configuration -> its label, naming only what differs between the configurations drawn together (the model
    always when there are several; with ``multiline`` the details go on a second line)."""
    configs = {}
    for run in runs:
        configs.setdefault(_config_key(run.settings), run.settings)
    fields = {name: {str(s[name]) for s in configs.values()} for name in ("dataset", "model", "freeze")}
    grid_keys = {k for s in configs.values() for k in s.get("grid", {})}
    varying = {k for k in grid_keys if len({str(s.get("grid", {}).get(k)) for s in configs.values()}) > 1}
    labels = {}
    for key, s in configs.items():
        details = []
        if len(fields["dataset"]) > 1:
            details.append(s["dataset"])
        if len(fields["freeze"]) > 1:
            details.append(f"freeze {s['freeze']}")
        grid = _grid_text(s.get("grid", {}), varying)
        if grid:
            details.append(grid)
        detail = ("\n" if multiline else "; ").join(details)
        if len(fields["model"]) == 1 and detail:
            labels[key] = detail  # one model: the figure's title names it
        elif detail:
            labels[key] = f"{s['model']}\n{detail}" if multiline else f"{s['model']} ({detail})"
        else:
            labels[key] = s["model"]
    return labels


def legend_title(runs: Sequence[RunData]) -> str:
    """What the series labels name: models, settings of one model, or both."""
    models = {run.settings["model"] for run in runs}
    configs = {_config_key(run.settings) for run in runs}
    if len(configs) == len(models):
        return "model"
    return "setting" if len(models) == 1 else "model (setting)"


def model_colour(model: str) -> str:
    names = models.model_names()
    index = names.index(model) if model in names else sum(map(ord, model))
    return PALETTE[index % len(PALETTE)]


def series_styles(keys: Sequence[tuple]) -> dict[tuple, dict]:
    """configuration -> colour, line style and hatch. The colour is the model's; the configurations of one
    model differ by line style (and hatch). A figure with one model and several configurations colours them
    along a sequential map instead, so a grid (batch size x epochs) reads in order."""
    models_seen = list(dict.fromkeys(key[1] for key in keys))
    styles: dict[tuple, dict] = {}
    if len(models_seen) == 1 and len(keys) > 1:
        cmap = matplotlib.colormaps["viridis"]
        for k, key in enumerate(keys):
            styles[key] = {"color": cmap(0.9 * k / (len(keys) - 1)), "linestyle": LINESTYLES[k % 2],
                           "hatch": ""}
        return styles
    within: dict[str, int] = {}
    for key in keys:
        k = within.get(key[1], 0)
        within[key[1]] = k + 1
        styles[key] = {"color": model_colour(key[1]), "linestyle": LINESTYLES[k % len(LINESTYLES)],
                       "hatch": HATCHES[k % len(HATCHES)]}
    return styles


def _by_config(runs: Sequence[RunData]) -> dict[tuple, list[RunData]]:
    grouped: dict[tuple, list[RunData]] = {}
    for run in runs:
        grouped.setdefault(_config_key(run.settings), []).append(run)
    return grouped


# =====================================================================================================================
# drawing
# =====================================================================================================================


def _pyplot():
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
                         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "pdf.fonttype": 42})
    return plt


def save(fig, png: PathLike, pdf: PathLike) -> None:
    """Write the figure as PNG and PDF, each atomically, and close it."""
    plt = _pyplot()
    try:
        for path, fmt in ((png, "png"), (pdf, "pdf")):
            with io.atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)


def epoch_ticks():
    return MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10])


def _legend_right(fig, handles, labels, title: str | None = None) -> None:
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=title)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _mean_band(frames: Sequence[pd.DataFrame], column: str) -> pd.DataFrame:
    """Per epoch: mean, min and max of ``column`` over seeds, evaluated epochs only."""
    stacked = pd.concat([f[["epoch", column]] for f in frames]).dropna()
    return stacked.groupby("epoch")[column].agg(["mean", "min", "max"]).reset_index()


def draw_curves(runs: Sequence[RunData], title: str) -> Any:
    plt = _pyplot()
    grouped = _by_config(runs)
    labels = series_labels(runs)
    styles = series_styles(list(grouped))
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4), constrained_layout=True)
    panels = {"train_loss": axes[0, 0], "eval_loss": axes[0, 1], "lr": axes[0, 2], "train_acc": axes[1, 0],
              "eval_acc": axes[1, 1]}
    eval_split = runs[0].settings.get("eval_split", "eval") if runs else "eval"
    titles = {**COLUMN_TITLES, "eval_loss": f"evaluation loss ({eval_split})",
              "eval_acc": f"evaluation accuracy ({eval_split})"}
    handles = []
    for key, members in grouped.items():
        frames = [m.history for m in members if m.history is not None and len(m.history)]
        line = None
        for column, ax in panels.items():
            band = _mean_band(frames, column) if frames else pd.DataFrame()
            if band.empty:
                continue
            # A lone point (one epoch, or sparse evaluation) needs a marker to be seen.
            marker = "o" if len(band) < 3 else None
            (line,) = ax.plot(band["epoch"], band["mean"], color=styles[key]["color"],
                              linestyle=styles[key]["linestyle"], marker=marker, markersize=4, linewidth=1.4)
            if len(members) > 1:
                ax.fill_between(band["epoch"], band["min"], band["max"], color=styles[key]["color"], alpha=0.15,
                                linewidth=0)
        if line is not None:
            diverged = [m for m in members if m.record.get("status") == "diverged"]
            handles.append((line, labels[key] + (" (diverged)" if diverged else "")))
    for column, ax in panels.items():
        ax.set_title(titles[column])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(epoch_ticks())
        if not ax.has_data():
            _note(ax, "not recorded")
        elif column == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for pair in (("train_loss", "eval_loss"), ("train_acc", "eval_acc")):
        if panels[pair[0]].has_data() and panels[pair[1]].has_data():
            lows, highs = zip(*(panels[p].get_ylim() for p in pair))
            for p in pair:
                panels[p].set_ylim(min(lows), max(highs))
    legend_ax = axes[1, 2]
    legend_ax.axis("off")
    if handles:
        legend_ax.legend([h for h, _ in handles], [t for _, t in handles], loc="center left", frameon=False,
                         title=legend_title(runs))
    fig.suptitle(title)
    return fig


def draw_published(runs: Sequence[RunData], published: dict, spec: Mapping[str, Any],
                   selectors: Mapping[str, Mapping[str, Any]], title: str) -> Any:
    """One row per published experiment, one column per series it records: theirs dashed, ours solid."""
    plt = _pyplot()
    experiments = published["experiments"]
    series = spec["series"]  # the file's series name -> our history column
    keys = list(selectors)
    columns = [c for c in HISTORY_COLUMNS
               if any(isinstance(experiments[k].get(name), list) for k in keys for name, col in series.items()
                      if col == c)]
    fig, axes = plt.subplots(len(keys), len(columns), figsize=(3.4 * len(columns) + 0.5, 2.3 * len(keys) + 0.6),
                             squeeze=False, constrained_layout=True)
    ours_handle = theirs_handle = None
    labels = series_labels(runs)
    for row, key in enumerate(keys):
        experiment = experiments[key]
        members = [r for r in runs if selects(r.settings, selectors[key])]
        colour = model_colour(members[0].settings["model"]) if members else "0.3"
        for col, column in enumerate(columns):
            ax = axes[row, col]
            for name, target in series.items():
                values = experiment.get(name)
                if target == column and isinstance(values, list):
                    theirs_handle, = ax.plot(np.arange(1, len(values) + 1), values, color="black", linestyle="--",
                                             linewidth=1.1)
            frames = [m.history for m in members if m.history is not None and len(m.history)]
            band = _mean_band(frames, column) if frames else pd.DataFrame()
            if not band.empty:
                ours_handle, = ax.plot(band["epoch"], band["mean"], color=colour, linewidth=1.6,
                                       marker="o" if len(band) < 3 else None, markersize=4)
            if column == "lr":
                ax.set_yscale("log")
            ax.xaxis.set_major_locator(epoch_ticks())
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(COLUMN_TITLES[column])
            if row == len(keys) - 1:
                ax.set_xlabel("epoch")
            if col == 0:
                ours = ", ".join(dict.fromkeys(labels[_config_key(m.settings)] for m in members))
                ax.set_ylabel(f"{experiment.get('experiment', key)}\nours: {ours}", fontsize=8.5)
    handles = [Line2D([], [], color="0.45", linewidth=1.6, label="ours (in the model's colour)")] if ours_handle else []
    if theirs_handle is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.1, label="authors (published)"))
    _legend_right(fig, handles, [h.get_label() for h in handles])
    fig.suptitle(title)
    return fig


def _class_names(settings: Mapping[str, Any], num_classes: int) -> list[str]:
    """A run's class names: a built-in dataset's catalog, a declared one's (in its settings), else the indices."""
    info = DATASETS.get(settings.get("dataset", ""))
    names = list(info.classes) if info is not None else list(settings.get("classes", []))
    return names if len(names) == num_classes else [str(k) for k in range(num_classes)]


def _ok_by_config(runs: Sequence[RunData]) -> dict[tuple, list[RunData]]:
    return {key: [m for m in members if m.ok] for key, members in _by_config(runs).items()}


def draw_classes(frame: pd.DataFrame, title: str) -> Any:
    """Images per class, one bar per split (the prepared dataset's class CSV: split, class_index, class_name,
    count); with many classes the bars are indexed and the figure stays page-wide."""
    plt = _pyplot()
    table = frame.pivot_table(index=["class_index", "class_name"], columns="split", values="count", aggfunc="sum",
                              sort=False).sort_index(level=0).fillna(0)
    splits = [s for s in dict.fromkeys(frame["split"]) if s in table.columns]
    names = [str(name) for _, name in table.index]
    many = len(names) > 20
    fig, ax = plt.subplots(figsize=(13 if many else max(6.5, 0.7 * len(names) + 2.5), 3.8), constrained_layout=True)
    positions = np.arange(len(names))
    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        ax.bar(positions + (k - (len(splits) - 1) / 2) * width, table[split].to_numpy(), width, label=split,
               color=("#4c72b0", "#dd8452", "#55a868", "#8172b3")[k % 4])
    if many:
        ticks = positions[::10]
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("class index")
    else:
        ax.set_xticks(positions)
        long_names = max(map(len, names), default=0) > 6
        ax.set_xticklabels(names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
        ax.set_xlabel("class")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("images")
    ax.grid(axis="y", alpha=0.3)
    handles, texts = ax.get_legend_handles_labels()
    _legend_right(fig, handles, texts, "split")
    fig.suptitle(title)
    return fig


def draw_f1(runs: Sequence[RunData], title: str) -> Any:
    """Grouped bars (class x configuration) when that stays readable, otherwise a configuration x class heatmap."""
    plt = _pyplot()
    grouped = _ok_by_config(runs)
    labels = series_labels(runs)
    styles = series_styles(list(grouped))
    scores = {key: np.mean([m.record["test"]["f1_per_class"] for m in members], axis=0)
              for key, members in grouped.items() if members}
    num_classes = max((len(v) for v in scores.values()), default=0)
    names = _class_names(runs[0].settings if runs else {}, num_classes)
    if not scores:
        fig, ax = plt.subplots(figsize=(6, 3))
        _note(ax, "no run finished (all diverged)")
        fig.suptitle(title)
        return fig
    if len(scores) <= 8 and num_classes <= 20:
        fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * (num_classes + 1) * max(1, len(scores) / 3)), 4.2),
                               constrained_layout=True)
        width = 0.8 / len(scores)
        positions = np.arange(num_classes + 1)
        for k, (key, values) in enumerate(scores.items()):
            heights = np.append(values, values.mean())
            ax.bar(positions + (k - (len(scores) - 1) / 2) * width, heights, width, label=labels[key],
                   color=styles[key]["color"], hatch=styles[key]["hatch"], edgecolor="white", linewidth=0.5)
        ax.set_xticks(positions)
        ax.set_xticklabels(names + ["macro avg"], rotation=45 if max(map(len, names), default=0) > 4 else 0,
                           ha="right" if max(map(len, names), default=0) > 4 else "center")
        ax.axvline(num_classes - 0.5, color="0.6", linewidth=0.8)
        ax.set_ylabel("F1 (test)")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
        handles, texts = ax.get_legend_handles_labels()
        _legend_right(fig, handles, texts, legend_title(runs))
    else:
        matrix = np.vstack([np.append(v, v.mean()) for v in scores.values()])
        # Room for the row labels, then about a third of an inch per class (capped at a page width).
        label_width = 0.075 * max(len(labels[key]) for key in scores)
        fig, ax = plt.subplots(figsize=(label_width + min(12.0, 2.0 + 0.35 * (num_classes + 1)),
                                        1.4 + 0.32 * len(scores)), constrained_layout=True)
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(scores)))
        ax.set_yticklabels([labels[key] for key in scores])
        step = 1 if num_classes <= 20 else 10
        ticks = list(range(0, num_classes, step)) + [num_classes]
        ax.set_xticks(ticks)
        ax.set_xticklabels([names[t] if step == 1 else str(t) for t in ticks[:-1]] + ["macro"], rotation=90)
        ax.set_xlabel("class" + (" index" if step > 1 else ""))
        fig.colorbar(image, ax=ax, label="F1 (test)", shrink=0.9)
    fig.suptitle(title)
    return fig


def draw_confusion(runs: Sequence[RunData], title: str) -> Any:
    plt = _pyplot()
    grouped = {k: v for k, v in _ok_by_config(runs).items() if v}
    labels = series_labels(runs, multiline=True)
    if not grouped:
        fig, ax = plt.subplots(figsize=(6, 3))
        _note(ax, "no run finished (all diverged)")
        fig.suptitle(title)
        return fig
    matrices = {key: np.sum([np.asarray(m.record["test"]["confusion_matrix"]) for m in members], axis=0)
                for key, members in grouped.items()}
    num_classes = next(iter(matrices.values())).shape[0]
    names = _class_names(runs[0].settings, num_classes)
    ncols = min(len(matrices), 3 if num_classes > 20 else 6)
    nrows = math.ceil(len(matrices) / ncols)
    side = 3.4 if num_classes <= 20 else 4.2
    # Counts are printed only while they stay legible: few classes and few panels.
    counts = num_classes <= 12 and len(matrices) <= 6
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols + 1.0, (side + 0.4) * nrows + 0.4), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    image = None
    for index, (ax, (key, matrix)) in enumerate(zip(axes.flat, matrices.items())):
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if counts:
            for (i, j), count in np.ndenumerate(matrix):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=6.5,
                            color="white" if share[i, j] > 0.6 else "black")
        ticks = range(num_classes) if num_classes <= 20 else range(0, num_classes, 10)
        tick_labels = [names[t] for t in ticks] if num_classes <= 20 else [str(t) for t in ticks]
        ax.set_xticks(list(ticks))
        ax.set_yticks(list(ticks))
        ax.set_xticklabels(tick_labels, rotation=90, fontsize=7)
        ax.set_yticklabels(tick_labels, fontsize=7)
        if index // ncols == nrows - 1 or index + ncols >= len(matrices):
            ax.set_xlabel("predicted")
            ax.tick_params(labelbottom=True)
        if index % ncols == 0:
            ax.set_ylabel("true")
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        ax.set_title(f"{labels[key]}\naccuracy {accuracy:.3f}", fontsize=8.5)
        for spine in ax.spines.values():
            spine.set_visible(True)
    for ax in list(axes.flat)[len(matrices):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, label="share of the true class", shrink=0.8)
    fig.suptitle(title)
    return fig


def conv_kernels(state: Mapping[str, Any], count: int = 2) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` convolution kernels of a state dict, in module order: (name, array O x I x k x k)."""
    found = []
    for name, tensor in state.items():
        if name.endswith("weight") and getattr(tensor, "ndim", 0) == 4:
            found.append((name.removesuffix(".weight"), tensor.detach().cpu().float().numpy()))
            if len(found) == count:
                break
    return found


def _tile_grid(kernels: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Kernels (N x k x k, or N x k x k x 3) laid out in rows of ``columns`` tiles, NaN between tiles."""
    n, k = kernels.shape[0], kernels.shape[1]
    rows = math.ceil(n / columns)
    shape = (rows * (k + gap) - gap, columns * (k + gap) - gap) + kernels.shape[3:]
    canvas = np.full(shape, np.nan if kernels.ndim == 3 else 1.0)
    for index in range(n):
        r, c = divmod(index, columns)
        canvas[r * (k + gap):r * (k + gap) + k, c * (k + gap):c * (k + gap) + k] = kernels[index]
    return canvas


def _mosaic(weights: np.ndarray, max_out: int = 64, max_in: int = 64, gap: int = 1) -> np.ndarray:
    """O x I x k x k as one image: a column per output channel, a row per input channel (capped)."""
    weights = weights[:max_out, :max_in]
    out_channels, in_channels, kh, kw = weights.shape
    canvas = np.full((in_channels * (kh + gap) - gap, out_channels * (kw + gap) - gap), np.nan)
    for o in range(out_channels):
        for i in range(in_channels):
            canvas[i * (kh + gap):i * (kh + gap) + kh, o * (kw + gap):o * (kw + gap) + kw] = weights[o, i]
    return canvas


def _draw_layer(fig, ax, name: str, weights: np.ndarray, first: bool) -> None:
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    out_channels, in_channels = weights.shape[:2]
    limit = float(np.abs(weights).max()) or 1.0
    columns = max(1, math.ceil(math.sqrt(out_channels * 2)))
    if first and in_channels == 3:
        rgb = weights.transpose(0, 2, 3, 1)
        low = rgb.min(axis=(1, 2, 3), keepdims=True)
        span = rgb.max(axis=(1, 2, 3), keepdims=True) - low
        ax.imshow(_tile_grid((rgb - low) / np.where(span > 0, span, 1), columns), interpolation="nearest")
        what = f"{out_channels} filters, {weights.shape[2]}x{weights.shape[3]} RGB"
    elif first and in_channels == 1:
        image = ax.imshow(_tile_grid(weights[:, 0], columns), cmap=cmap, vmin=-limit, vmax=limit,
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        what = f"{out_channels} filters, {weights.shape[2]}x{weights.shape[3]}"
    else:
        image = ax.imshow(_mosaic(weights), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        shown = f" (first {min(out_channels, 64)} x {min(in_channels, 64)} shown)" if max(out_channels,
                                                                                        in_channels) > 64 else ""
        what = f"{out_channels} outputs (columns) x {in_channels} inputs (rows){shown}"
        ax.set_xlabel("output channel")
        ax.set_ylabel("input channel")
    ax.set_title(f"{name}: {what}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw_kernels(runs: Sequence[RunData], weights: Sequence[PathLike], title: str) -> Any:
    plt = _pyplot()
    labels = series_labels(runs)
    layers = []
    for run, path in zip(runs, weights):
        state = torch.load(path, map_location="cpu", weights_only=True)
        found = conv_kernels(state)
        if not found:
            raise ValueError(f"{path} ({run.settings['model']}) has no convolution layer; remove the model from "
                             f"studies.<study>.figures.kernels")
        layers.append(found)
    ncols = max(len(found) for found in layers)
    fig, axes = plt.subplots(len(runs), ncols, figsize=(6.2 * ncols, 3.6 * len(runs) + 0.6), squeeze=False,
                             constrained_layout=True)
    for row, (run, found) in enumerate(zip(runs, layers)):
        for col in range(ncols):
            ax = axes[row, col]
            if col < len(found):
                _draw_layer(fig, ax, *found[col], first=col == 0)
            else:
                ax.axis("off")
        axes[row, 0].text(-0.08, 0.5, labels[_config_key(run.settings)], transform=axes[row, 0].transAxes,
                          rotation=90, ha="right", va="center", fontsize=10)
    fig.suptitle(title)
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both: lower cost (x) and higher accuracy (y), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def model_points(runs: Sequence[RunData], bench_cpu: Sequence[PathLike], bench_gpu: Sequence[PathLike]) -> pd.DataFrame:
    """One row per (dataset, model, freeze): mean test top-1 over settings and seeds, parameters, latencies."""
    benches: dict[tuple, dict] = {}
    for path in [*bench_cpu, *bench_gpu]:
        record = io.read_json(path)
        benches[bench_identity(record)] = record
    rows = []
    for run in runs:
        if not run.ok:
            continue
        s = run.settings
        key = BenchKey.of(s)
        summary = summarize(run.record, benches.get((*key, "cpu")), benches.get((*key, "gpu")))
        rows.append({"dataset": s["dataset"], "model": s["model"], "freeze": s["freeze"],
                     "accuracy_pct": summary.get("test_top1_pct"), "params": summary.get("params_count"),
                     "cpu_ms": summary.get("cpu_latency_median_ms"), "gpu_ms": summary.get("gpu_latency_median_ms"),
                     "gpu_reason": summary.get("gpu_not_measured")})
    frame = pd.DataFrame(rows, columns=["dataset", "model", "freeze", "accuracy_pct", "params", "cpu_ms", "gpu_ms",
                                        "gpu_reason"])
    if frame.empty:
        return frame
    numbers = frame.groupby(["dataset", "model", "freeze"], sort=False)[["accuracy_pct", "params", "cpu_ms",
                                                                         "gpu_ms"]].mean()
    reasons = frame.groupby(["dataset", "model", "freeze"], sort=False)["gpu_reason"].first()
    return numbers.join(reasons).reset_index()


def _short_number(value: float, _position=None) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def _log_axis(axis, ax) -> None:
    """A log axis labelled 1, 2, 5 per decade in plain numbers (1M, 200k, 0.5), without minor labels."""
    ax.set_xscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_short_number))
    axis.set_minor_formatter(NullFormatter())


def draw_pareto(points: pd.DataFrame, title: str) -> Any:
    plt = _pyplot()
    axes_spec = (("params", "parameters", True), ("cpu_ms", "CPU latency, batch 1 (ms)", True),
                 ("gpu_ms", "GPU latency, batch 1 (ms)", True))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), constrained_layout=True)
    datasets = list(dict.fromkeys(points["dataset"])) if len(points) else []
    markers = {d: DATASET_MARKERS[k % len(DATASET_MARKERS)] for k, d in enumerate(datasets)}
    several_freeze = len(set(points["freeze"])) > 1 if len(points) else False
    for ax, (column, label, logx) in zip(axes, axes_spec):
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 accuracy (%)")
        usable = points.dropna(subset=[column, "accuracy_pct"]) if len(points) else points
        if usable.empty:
            text = "not measured"
            if column == "gpu_ms" and len(points) and points["gpu_reason"].notna().any():
                reason = str(points["gpu_reason"].dropna().iloc[0])
                text = reason if reason.startswith("not measured") else f"not measured: {reason}"
            _note(ax, text.replace(": ", ":\n", 1))
            continue
        for dataset in datasets:
            part = usable[usable["dataset"] == dataset].reset_index(drop=True)
            if part.empty:
                continue
            for _, row in part.iterrows():
                ax.scatter(row[column], row["accuracy_pct"], color=model_colour(row["model"]),
                           marker=markers[dataset], s=55, edgecolor="black", linewidth=0.6, zorder=3)
                text = row["model"] + (f" ({row['freeze']})" if several_freeze else "")
                ax.annotate(text, (row[column], row["accuracy_pct"]), textcoords="offset points", xytext=(5, 4),
                            fontsize=7.5, color="0.25")
            front = pareto_front(list(zip(part[column], part["accuracy_pct"])))
            if len(front) > 1:
                ax.step(part.loc[front, column], part.loc[front, "accuracy_pct"], where="post", color="0.35",
                        linestyle="--", linewidth=1, zorder=2)
        if logx:
            _log_axis(ax.xaxis, ax)
        ax.grid(alpha=0.3, which="major")
    handles = [Line2D([], [], marker="o", linestyle="", markersize=8, markerfacecolor=model_colour(m),
                      markeredgecolor="black", label=m) for m in dict.fromkeys(points["model"])] if len(points) else []
    handles += [Line2D([], [], marker=markers[d], linestyle="", markersize=8, color="0.5", label=d)
                for d in datasets] if len(datasets) > 1 else []
    handles += [Line2D([], [], color="0.35", linestyle="--", label="Pareto front")]
    _legend_right(fig, handles, [h.get_label() for h in handles])
    fig.suptitle(title)
    return fig


def draw_assumptions(cells: pd.DataFrame, title: str) -> Any:
    """One panel per unstated setting: the headline metric of each printed number for each value tried (the
    study's own filled, each alternative hollow, in its colour), the paper's number as a black bar."""
    plt = _pyplot()
    groups = list(cells.groupby("assumption", sort=True)) if len(cells) else []
    if not groups:
        fig, ax = plt.subplots(figsize=(6, 3))
        _note(ax, "no headline number to compare")
        fig.suptitle(title)
        return fig
    width = max(6.5, 0.42 * max(group["cell"].nunique() for _, group in groups) + 2.5)
    fig, axes = plt.subplots(len(groups), 1, figsize=(width, 2.9 * len(groups) + 0.6), squeeze=False,
                             constrained_layout=True)
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
    for ax, (_, group) in zip(axes[:, 0], groups):
        cell_names = list(dict.fromkeys(group["cell"]))
        x = {name: k for k, name in enumerate(cell_names)}
        paper = group.drop_duplicates("cell")
        ax.scatter([x[c] for c in paper["cell"]], paper["paper"], marker="_", s=260, color="black", linewidths=2,
                   label="paper", zorder=3)
        values = list(dict.fromkeys(group["value"].astype(str)))
        for k, value in enumerate(values):
            mine = group[group["value"].astype(str) == value]
            declared = mine["declared"].astype(str).str.lower().eq("true").any()
            colour = colours[k % len(colours)]
            offset = (k - (len(values) - 1) / 2) * 0.12
            ax.scatter([x[c] + offset for c in mine["cell"]], mine["ours"], s=42, zorder=4, linewidths=1.4,
                       facecolor=colour if declared else "none", edgecolor=colour,
                       label=f"{value} (ours)" if declared else str(value))
        ax.set_xticks(range(len(cell_names)))
        ax.set_xlim(-0.6, len(cell_names) - 0.4)  # one slot per printed number, the values side by side in it
        ax.set_xticklabels(cell_names if len(cell_names) <= 30 else [""] * len(cell_names), rotation=60,
                           ha="right", fontsize=7.5)
        ax.set_title(f"{group['key'].iloc[0]}", fontsize=9.5)
        ax.set_ylabel(str(cells["headline"].iloc[0]) if "headline" in cells else "headline")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(title)
    return fig


# =====================================================================================================================
# the job
# =====================================================================================================================


def make(config: dict, figure: Figure, files: Mapping[str, Sequence[PathLike]], png: PathLike,
         pdf: PathLike) -> None:
    """Draw ``figure`` (cnnrepro.report.figure_plan) from exactly the given files, keyed as the workflow passes
    them: ``metrics``, ``histories``, ``weights`` (one per run of the figure, in its order), ``bench_cpu``,
    ``bench_gpu``, ``published``, ``classes`` and ``cells`` (the assumptions' headline numbers)."""
    study = figure.study
    settings = config["studies"][study]
    title = f"{settings['title'] or study}"
    suffix = ", ".join(x for x in (figure.dataset, f"freeze {figure.freeze}" if figure.freeze else None,
                                   figure.model) if x)
    heading = f"{title}\n{KIND_TITLES[figure.kind]}" + (f", {suffix}" if suffix else "")
    kind = figure.kind
    if kind == "classes":
        save(draw_classes(pd.read_csv(files["classes"][0]), heading), png, pdf)
        return
    if kind == "assumptions":
        save(draw_assumptions(pd.read_csv(files["cells"][0]), heading), png, pdf)
        return
    histories = files.get("histories") if kind in ("curves", "published") else None
    runs = load_runs(figure.runs, files["metrics"], histories)
    if kind == "curves":
        fig = draw_curves(runs, heading)
    elif kind == "published":
        spec = settings["figures"]["published_curves"]
        fig = draw_published(runs, read_published(files["published"][0]), spec, spec["runs"], heading)
    elif kind == "f1":
        fig = draw_f1(runs, heading)
    elif kind == "confusion":
        fig = draw_confusion(runs, heading)
    elif kind == "kernels":
        fig = draw_kernels(runs, files["weights"], heading)
    elif kind == "pareto":
        fig = draw_pareto(model_points(runs, files.get("bench_cpu", ()), files.get("bench_gpu", ())), heading)
    else:  # pragma: no cover
        raise ValueError(f"unknown figure kind {kind!r}")
    save(fig, png, pdf)
    log.info("wrote %s and %s", png, pdf)
