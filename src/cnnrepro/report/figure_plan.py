"""Which figures each study gets, from its configuration alone, and their captions.

``plan(config, settings)`` lists every study's figures; the workflow (workflow/rules/report.smk) makes one job per
figure and hands cnnrepro.report.figures.make the figure and the exact files it reads. Nothing here derives a path
except the published curves' file, resolved like a paper table's CSV.

What a study gets:

- ``curves-<dataset>[-<freeze>]``: train/evaluation loss and accuracy and the lr per epoch, one line per model
  and grid setting (one figure per freeze level when the study has several);
- ``published``: when ``figures.published_curves`` names the authors' own histories, theirs beside ours;
- ``f1-<dataset>``, ``confusion-<dataset>``: per-class test F1 and the test confusion matrices;
- ``kernels-<model>``: the first two convolution layers' kernels of each model listed in ``figures.kernels``;
- ``pareto``: accuracy against parameters and CPU/GPU latency, when the study benchmarks its models;
- ``classes-<dataset>``: images per class in each split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from cnnrepro import config as cfg
from cnnrepro.tables import assumptions
from cnnrepro.tables.select import selects

PathLike = str | Path

KINDS = ("curves", "published", "f1", "confusion", "kernels", "pareto", "classes", "assumptions")


@dataclass(frozen=True)
class Figure:
    """One figure of one study. ``name`` is its file stem; ``runs`` the ids of the runs it draws, in order."""

    study: str
    name: str
    kind: str
    runs: tuple[str, ...] = ()
    dataset: str | None = None
    freeze: str | None = None
    model: str | None = None

    def report_labels(self) -> dict[str, str]:
        """Labels for Snakemake's report: what the figure shows and of which part of the study."""
        labels = {"figure": KIND_TITLES[self.kind]}
        for key in ("dataset", "freeze", "model"):
            if getattr(self, key) is not None:
                labels[key] = getattr(self, key)
        return labels


KIND_TITLES = {"curves": "learning curves", "published": "published curves", "f1": "per-class F1",
               "confusion": "confusion matrices", "kernels": "conv kernels", "pareto": "accuracy vs cost",
               "classes": "class distribution", "assumptions": "unstated settings"}


def published_curves_path(config: dict, study: str) -> Path | None:
    """The study's published curves file: a bare name lives in ``authors_dir``; a path with a '/' (relative
    to the working directory, or absolute) is used as given, as for paper tables."""
    spec = config["studies"][study]["figures"]["published_curves"]
    if spec is None:
        return None
    file = spec["file"]
    return Path(file) if "/" in file else Path(config["authors_dir"]) / file


def read_published(path: PathLike) -> dict:
    """A published curves file: ``{"source": {...}, "experiments": {key: {"experiment": label, series: [...]}}}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), dict):
        raise ValueError(f"{path}: expected a JSON object with an 'experiments' object (key -> series lists)")
    return data


def _check_published(config: dict, study: str, runs: list[cfg.Run],
                     run_settings: Mapping[str, dict]) -> list[str]:
    """The published curves' runs in the order configured; every name checked against the file and the runs."""
    spec = config["studies"][study]["figures"]["published_curves"]
    where = f"studies.{study}.figures.published_curves"
    path = published_curves_path(config, study)
    if not path.is_file():
        raise cfg.ConfigError(f"config error at '{where}.file': {path} does not exist; give a file name in "
                              f"authors_dir ({config['authors_dir']}) or a path with a '/'")
    try:
        experiments = read_published(path)["experiments"]
    except (ValueError, json.JSONDecodeError) as error:
        raise cfg.ConfigError(f"config error at '{where}.file': {error}") from None
    chosen: list[str] = []
    for key, selector in spec["runs"].items():
        if key not in experiments:
            raise cfg.ConfigError(f"config error at '{where}.runs.{key}': {path} has no experiment '{key}'; its "
                                  f"experiments: {', '.join(experiments)}")
        series = [name for name in spec["series"] if isinstance(experiments[key].get(name), list)]
        if not series:
            raise cfg.ConfigError(f"config error at '{where}.series': experiment '{key}' of {path} has none of the "
                                  f"series {', '.join(spec['series'])}")
        matched = [run.id for run in runs if selects(run_settings[run.id], selector)]
        if not matched:
            raise cfg.ConfigError(f"config error at '{where}.runs.{key}': no run of the study has "
                                  f"{', '.join(f'{k}={v}' for k, v in selector.items())}")
        chosen += [run_id for run_id in matched if run_id not in chosen]
    return chosen


def _first_seed(runs: Iterable[cfg.Run]) -> list[cfg.Run]:
    seen, out = set(), []
    for run in runs:
        key = (run.dataset, run.model, run.freeze, run.variant)
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def study_plan(config: dict, study: str, run_settings: Mapping[str, dict]) -> list[Figure]:
    """The figures of one study, in reading order; a misnamed figure setting is a ConfigError naming it.
    ``run_settings``: every run's settings by run id (cnnrepro.config.settings_by_run), what selectors match."""
    settings = config["studies"][study]
    options = settings["figures"]
    # The study's own runs: a sweep's runs of an assumption's alternative have a figure of their own.
    runs = [run for run in cfg.expand_runs(config, [study]) if not run_settings[run.id].get("assumption")]
    ids = lambda chosen: tuple(run.id for run in chosen)  # noqa: E731
    datasets = [d for d in settings["datasets"] if any(run.dataset == d for run in runs)]
    freezes = [f for f in settings["freeze"] if any(run.freeze == f for run in runs)]
    figures: list[Figure] = []
    for dataset in datasets:
        if len(freezes) > 1:
            for freeze in freezes:
                chosen = [r for r in runs if r.dataset == dataset and r.freeze == freeze]
                figures.append(Figure(study, f"curves-{dataset}-{freeze}", "curves", ids(chosen), dataset, freeze))
        else:
            chosen = [r for r in runs if r.dataset == dataset]
            figures.append(Figure(study, f"curves-{dataset}", "curves", ids(chosen), dataset))
    if options["published_curves"] is not None:
        published = _check_published(config, study, runs, run_settings)
        figures.append(Figure(study, "published", "published", tuple(published)))
    for dataset in datasets:
        chosen = ids(r for r in runs if r.dataset == dataset)
        figures.append(Figure(study, f"f1-{dataset}", "f1", chosen, dataset))
        figures.append(Figure(study, f"confusion-{dataset}", "confusion", chosen, dataset))
    for k, model in enumerate(options["kernels"]):
        if model not in settings["models"]:
            raise cfg.ConfigError(f"config error at 'studies.{study}.figures.kernels[{k}]': '{model}' is not one "
                                  f"of the study's models ({', '.join(settings['models'])})")
        chosen = ids(_first_seed(r for r in runs if r.model == model))
        figures.append(Figure(study, f"kernels-{model}", "kernels", chosen, model=model))
    if settings["benchmark"]:
        figures.append(Figure(study, "pareto", "pareto", ids(runs)))
    for dataset in datasets:
        figures.append(Figure(study, f"classes-{dataset}", "classes", (), dataset))
    if assumptions.compared(config, study):
        figures.append(Figure(study, "assumptions", "assumptions"))
    for kind in options["paper_figures"]:
        if kind not in KINDS:
            raise cfg.ConfigError(f"config error at 'studies.{study}.figures.paper_figures.{kind}': not a figure "
                                  f"kind; kinds: {', '.join(KINDS)}")
    return figures


def plan(config: dict, run_settings: Mapping[str, dict]) -> dict[str, list[Figure]]:
    """study -> its figures, for a validated configuration and its runs' settings by run id."""
    return {study: study_plan(config, study, run_settings) for study in config["studies"]}


def find(figures: Mapping[str, list[Figure]], study: str, name: str) -> Figure:
    """The figure ``name`` (its file stem) of ``study`` in a :func:`plan`."""
    for figure in figures.get(study, ()):
        if figure.name == name:
            return figure
    raise KeyError(f"study {study} has no figure named {name!r}; its figures: "
                   f"{', '.join(f.name for f in figures.get(study, ())) or 'none'}")


# =====================================================================================================================
# captions
# =====================================================================================================================


def _limits_note(config: dict) -> str:
    limits = {k: v for k, v in config.get("limits", {}).items() if v is not None}
    if not limits:
        return ""
    listed = ", ".join(f"{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in limits.items())
    return f" Runs capped by this configuration's limits ({listed}): not the papers' settings."


def caption(config: dict, figure: Figure) -> str:
    """A figure's caption, as plain text (also valid reStructuredText)."""
    study = figure.study
    settings = config["studies"][study]
    title = settings["title"] or study
    where = f" on {figure.dataset}" if figure.dataset else ""
    level = f", freeze level {figure.freeze}" if figure.freeze else ""
    seeds = settings["seeds"]
    over_seeds = f" Mean over seeds {', '.join(map(str, seeds))} (band: min to max)." if len(seeds) > 1 else ""
    kind = figure.kind
    if kind == "curves":
        text = (f"Learning curves of {title}{where}{level}: training and evaluation ({settings['eval_split']} split) "
                "loss and accuracy and the learning rate per epoch, one line per model and setting; the colour is "
                "the model's in every figure. Epochs without an evaluation have no evaluation point."
                + over_seeds)
    elif kind == "published":
        spec = settings["figures"]["published_curves"]
        source = spec["source"] or str(published_curves_path(config, study))
        text = (f"The authors' published training histories (dashed, black; {source}) beside ours (solid) for "
                f"{title}, one row per experiment, one column per recorded series. Their series are drawn as "
                "published; ours are the matching runs' history.")
    elif kind == "f1":
        text = (f"Per-class F1 on the test set of every model and setting of {title}{where}, and the macro "
                "average (the unweighted mean over classes)." + over_seeds.replace(" (band: min to max)", ""))
    elif kind == "confusion":
        text = (f"Confusion matrices on the test set{where} of every model and setting of {title}: rows are true "
                "classes, columns predicted ones; the colour is the share of the row (recall), the numbers are "
                "image counts (summed over seeds).")
    elif kind == "kernels":
        text = (f"Kernels of the first two convolution layers of {figure.model} after training ({title}), one row "
                "per trained configuration (first seed). First layer: one tile per filter (RGB filters in colour, "
                "each scaled to its own range). Second layer: one 2-D kernel per output (column) and input (row) "
                "channel. Blue is negative, red positive, on one symmetric scale per layer.")
    elif kind == "pareto":
        text = (f"Test top-1 accuracy against parameter count and against batch-1 inference latency on the CPU and "
                f"the GPU (median of the correct measurement) for the models of {title}, one point per model and "
                "dataset (freeze level too where there are several), averaged over settings and seeds. Points on "
                "a dashed line are the Pareto front of their dataset: no other model is both cheaper and more "
                "accurate. Latencies were measured on this workflow's machine.")
    elif kind == "classes":
        text = f"Images per class in each split of {figure.dataset} as prepared for training ({title})."
    elif kind == "assumptions":
        text = (f"The settings {title}'s paper never stated, one panel per setting: the study's headline metric "
                "for each value tried (ours filled, the alternatives hollow), beside the paper's number (black "
                "bar), per printed number. Each value changes only that setting; the paper tables use ours.")
    else:  # pragma: no cover - plan only makes the kinds above
        raise ValueError(f"unknown figure kind {kind!r}")
    paper = settings["figures"]["paper_figures"].get(kind)
    if paper:
        text += f" The paper's counterpart: {paper}."
    if kind in ("curves", "published", "f1", "confusion", "kernels", "pareto", "assumptions"):
        text += _limits_note(config)
    return text
