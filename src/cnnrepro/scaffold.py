"""A new study from a paper: ``cnnrepro new-study NAME --models ... --datasets ...`` writes a commented study
skeleton (an overlay for ``snakemake --configfile``) and the paper-table CSV beside it, its key columns filled and its
metric column left for the paper's numbers. docs/new-study.md walks through the rest."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cnnrepro import config as cfg
from cnnrepro import models
from cnnrepro.data import declared
from cnnrepro.data.catalog import DATASETS
from cnnrepro.models import zoo

METRIC = "test_acc_pct"  # the paper's column the skeleton maps (to our test_top1_pct)


@dataclass(frozen=True)
class DatasetChoice:
    name: str  # the name the study uses
    declaration: dict | None  # None: a built-in dataset
    channels: int | None = None


def _safe_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower()) or "images"


def dataset_choice(argument: str) -> DatasetChoice:
    """A built-in dataset's name, a torchvision dataset class (FashionMNIST), or an image folder (with train/ and
    test/ inside, or one folder that a test split is carved from)."""
    if argument in DATASETS:
        return DatasetChoice(argument, None, DATASETS[argument].channels)
    folder = Path(argument)
    if folder.is_dir():
        name = _safe_name(folder.resolve().name)
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            declaration = {"source": "imagefolder", "train": str(folder / "train"), "test": str(folder / "test")}
        else:
            declaration = {"source": "imagefolder", "train": str(folder), "split_test_from_train": 0.2}
        facts = declared.folder_facts(declaration["train"], declaration.get("test"))
        return DatasetChoice(name, declaration, facts.channels)
    try:
        declared.torchvision_class(argument)
    except declared.DeclarationError:
        raise ValueError(f"--datasets {argument}: not a built-in dataset ({', '.join(DATASETS)}), a torchvision "
                         "dataset class (e.g. FashionMNIST) nor an existing image folder") from None
    known = declared.known_class(argument)
    # No source: it follows data.source (torchvision downloads it; the smoke preset's synthetic makes stand-ins).
    return DatasetChoice(_safe_name(argument), {"class": argument}, known.channels if known else None)


def check_model(name: str) -> None:
    """A built-in model, a registered one (a model file's), or a torchvision zoo name; ValueError otherwise."""
    if zoo.is_zoo_name(name):
        try:
            zoo.register(name)
        except zoo.UnknownZooModel as error:
            raise ValueError(f"--models: {error}") from None
    elif name not in models.model_names():
        raise ValueError(f"--models {name}: not a registered model ({', '.join(models.model_names())}), nor "
                         "torchvision.<name> of torchvision's zoo; a model of your own: --model-file my_nets.py")


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) if not re.fullmatch(r"[A-Za-z0-9_.]+", item) else item
                           for item in items) + "]"


def _dataset_lines(choices: list[DatasetChoice]) -> list[str]:
    lines = []
    for choice in choices:
        if choice.declaration is None:
            continue
        lines.append(f"    {choice.name}:")
        for key, value in choice.declaration.items():
            lines.append(f"      {key}: {json.dumps(value) if isinstance(value, str) else value}")
        if choice.declaration.get("class") == "EMNIST":
            lines.append("      args: {split: balanced}   # byclass, bymerge, balanced, letters, digits or mnist")
        lines.append("      # store_size: 64   # the side images are stored at (default: the studies' input.size)")
    return ["data:", "  datasets:", *lines] if lines else []


def skeleton(name: str, model_names: list[str], choices: list[DatasetChoice], model_files: list[str],
             study: str, table: str) -> str:
    """The study's YAML, every key commented with what to take from the paper."""
    rgb = any(models.get_spec(m).channels == 3 for m in model_names) and \
        any(c.channels in (1, None) for c in choices)
    files = [f"model_files: {_flow(model_files)}   # your networks (each builder: @register_model)", ""] \
        if model_files else []
    return "\n".join([
        f"# The study {name}: a paper's comparison, reproduced. Fill every TODO from the paper, then:",
        f"#   cnnrepro --configfile {study} check",
        f"#   snakemake --cores 4 --configfile presets/smoke.yaml {study} {name}   # minutes: a rehearsal",
        f"#   snakemake --cores 4 --resources gpu=1 --configfile {study} {name}    # the reproduction",
        "# Every key: workflow/schemas/config.schema.yaml; the walk-through: docs/new-study.md.",
        *files,
        *_dataset_lines(choices),
        "studies:",
        f"  {name}:",
        "    title: \"TODO: the paper's title\"",
        "    reference: \"TODO: authors, venue, year (and the code, if published)\"",
        f"    datasets: {_flow([c.name for c in choices])}",
        f"    models: {_flow(model_names)}",
        "    freeze: [none]          # none: everything trains; head: only the new classifier (transfer learning)",
        "    pretrained: false       # true: ImageNet weights (the workflow's fetch_weights rule gets them once)",
        "    input:",
        "      size: model           # the side the images are resized to: model (each model's own), or e.g. 32",
        f"      rgb: {'true' if rgb else 'false'}             # grey images repeated to 3 channels (pretrained models "
        "need it)",
        "      normalization: auto   # auto: the train split's mean and std; model: the weights' own (pretrained)",
        "    augment: none           # none, flip, crop_flip (random crop with 4 px padding and flip)",
        "    recipe:                 # TODO: the paper's optimizer, learning rate, batch size and epochs",
        "      optimizer: sgd",
        "      lr: 1.0e-2",
        "      momentum: 0.9",
        "      batch_size: 64",
        "      schedule: constant",
        "      epochs: 30",
        "    seeds: [0]              # more seeds give our numbers a 95 % interval",
        "    benchmark: false        # true: size, FLOPs and CPU/GPU latency of every trained model",
        "    tables:",
        f"      - file: {table}      # the paper's table: one row per printed cell, {METRIC} to fill",
        "        match:              # a printed key -> the runs it means (edit the printed names to the paper's)",
        f"          model: {{{', '.join(f'{m}: {{model: {m}}}' for m in model_names)}}}",
        f"          dataset: {{{', '.join(f'{c.name}: {{dataset: {c.name}}}' for c in choices)}}}",
        "        metrics:",
        f"          {METRIC}: test_top1_pct   # the paper's column -> our number (cnnrepro.tables.summary)",
        "        number: \"TODO: Table 2\"",
        "        caption: \"TODO: the paper's caption\"",
        "        layout:",
        "          rows: [model]",
        "          columns: [dataset, metric]",
        f"          units: {{{METRIC}: \"%\"}}",
        "",
    ])


def table_rows(model_names: list[str], choices: list[DatasetChoice]) -> str:
    """The paper table's CSV: key columns filled, the metric column empty until the paper's numbers go in."""
    lines = [f"model,dataset,{METRIC}"]
    lines += [f"{m},{c.name}," for m in model_names for c in choices]
    return "\n".join(lines) + "\n"


def new_study(name: str, model_names: list[str], dataset_arguments: list[str], model_files: list[str],
              out: Path) -> tuple[Path, Path]:
    """Write ``out/<name>.yaml`` and ``out/<name>.csv``; ValueError for a name, model or dataset that cannot be."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"study name {name!r}: letters, digits and underscores only (it names folders)")
    for path in model_files:
        try:
            models.load_model_file(path)
        except models.ModelFileError as error:
            raise ValueError(f"--model-file: {error}") from None
    for model in model_names:
        check_model(model)
    choices = [dataset_choice(argument) for argument in dataset_arguments]
    study, table = out / f"{name}.yaml", out / f"{name}.csv"
    for path in (study, table):
        if path.exists():
            raise ValueError(f"{path} exists: not overwritten (move it away, or choose another name)")
    out.mkdir(parents=True, exist_ok=True)
    study.write_text(skeleton(name, model_names, choices, model_files, str(study), str(table)))
    table.write_text(table_rows(model_names, choices))
    cfg.load_yaml(study)  # what was written reads back
    return study, table
