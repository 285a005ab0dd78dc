"""Configuration: validation against the schema and expansion of studies into training runs.

The unit of work is one training run, identified by study/dataset/model/freeze/variant/seed.
A variant is one combination of a study's ``grid`` (e.g. batch size x epochs); ``base`` when
the study has no grid.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DATASET_CLASSES = {"mnist": 10, "kmnist": 10, "cifar10": 10, "cifar100": 100}
DATASET_CHANNELS = {"mnist": 1, "kmnist": 1, "cifar10": 3, "cifar100": 3}
GRID_PREFIXES = ("recipe.", "input.")
GRID_KEYS = ("augment", "pretrained", "eval_split")


class ConfigError(ValueError):
    """A configuration problem, with the offending field named in the message."""


@dataclass(frozen=True, order=True)
class Run:
    study: str
    dataset: str
    model: str
    freeze: str
    variant: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.study}/{self.dataset}/{self.model}/{self.freeze}/{self.variant}/seed{self.seed}"

    @property
    def wildcards(self) -> dict[str, str]:
        return {"study": self.study, "dataset": self.dataset, "model": self.model,
                "freeze": self.freeze, "variant": self.variant, "seed": str(self.seed)}


def deep_merge(base: dict, overlay: dict) -> dict:
    """Return ``base`` updated recursively with ``overlay`` (as Snakemake does for --configfile)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def check_schema(config: dict, schema_path: str | Path = SCHEMA_PATH) -> None:
    """Raise ConfigError naming the first offending field, in words a user can act on."""
    import jsonschema

    schema = load_yaml(schema_path)
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = list(validator_cls(schema).iter_errors(config))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    # oneOf errors hide the real cause in their context; show the deepest one.
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    field = _field_path(error.absolute_path)
    hint = ""
    if error.validator == "additionalProperties":
        hint = " (a misspelt or unknown key: see workflow/schemas/config.schema.yaml for the valid keys)"
    elif error.validator == "enum":
        hint = f"; valid values: {', '.join(map(str, error.validator_value))}"
    raise ConfigError(f"config error at '{field}': {error.message}{hint}")


def validate(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Check ``config`` against the schema, fill its defaults in place, then check what the schema cannot."""
    check_schema(config, schema_path)
    from snakemake.utils import validate as snakemake_validate

    snakemake_validate(config, str(schema_path), set_default=True)
    check_semantics(config)
    return config


def load_config(path: str | Path = "config.yaml", overlays: Iterable[str | Path] = ()) -> dict:
    config = load_yaml(path)
    for overlay in overlays:
        config = deep_merge(config, load_yaml(overlay))
    return validate(config)


def check_semantics(config: dict) -> None:
    levels = config.get("freeze_levels", {})
    norms = config.get("normalization", {})
    tables_dir = Path(config.get("paper_tables_dir", "paper_tables"))
    for name, study in config["studies"].items():
        where = f"studies.{name}"
        for i, level in enumerate(study.get("freeze", [])):
            if level not in levels:
                raise ConfigError(f"config error at '{where}.freeze[{i}]': unknown freeze level '{level}'; "
                                  f"defined levels: {', '.join(levels)}. Define it under 'freeze_levels'.")
        norm = study.get("input", {}).get("normalization", "unit")
        if norm not in norms:
            raise ConfigError(f"config error at '{where}.input.normalization': unknown normalization "
                              f"'{norm}'; defined: {', '.join(norms)}. Define it under 'normalization'.")
        for key in study.get("grid", {}):
            if key not in GRID_KEYS and not key.startswith(GRID_PREFIXES):
                raise ConfigError(f"config error at '{where}.grid.{key}': a grid axis must be one of "
                                  f"{', '.join(GRID_KEYS)} or start with {' or '.join(GRID_PREFIXES)}")
        for i, table in enumerate(study.get("tables", [])):
            if not (tables_dir / table["file"]).is_file():
                raise ConfigError(f"config error at '{where}.tables[{i}].file': {tables_dir / table['file']} "
                                  f"does not exist; paper tables live in '{tables_dir}/'")
        if "recipe" in study and "lr" not in study["recipe"]:
            raise ConfigError(f"config error at '{where}.recipe.lr': a learning rate is required")
    for dataset, override in config.get("data", {}).get("datasets", {}).items():
        source = override.get("source", config["data"]["source"])
        if source == "npz" and "npz" not in override:
            raise ConfigError(f"config error at 'data.datasets.{dataset}.npz': source npz needs "
                              "{train: path, test: path}")


def get_path(settings: dict, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _set_path(settings: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target = settings
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def variants(study: dict) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of the study's grid, as (variant id, {setting: value})."""
    grid = study.get("grid") or {}
    if not grid:
        return [("base", {})]
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in combo.items())
        out.append((name, combo))
    return out


def _excluded(study: dict, fields: dict[str, Any]) -> bool:
    return any(all(fields.get(k) == v for k, v in rule.items()) for rule in study.get("exclude", []))


def expand_runs(config: dict, studies: Iterable[str] | None = None) -> list[Run]:
    runs = []
    for name, study in config["studies"].items():
        if studies is not None and name not in studies:
            continue
        for dataset, model, freeze, (variant, combo), seed in itertools.product(
            study["datasets"], study["models"], study.get("freeze", ["none"]), variants(study),
            study.get("seeds", [0]),
        ):
            fields = {"dataset": dataset, "model": model, "freeze": freeze, "seed": seed, **combo}
            if not _excluded(study, fields):
                runs.append(Run(name, dataset, model, freeze, variant, seed))
    return runs


def find_run(config: dict, wildcards: dict[str, str]) -> Run:
    run = Run(wildcards["study"], wildcards["dataset"], wildcards["model"], wildcards["freeze"],
              wildcards["variant"], int(wildcards["seed"]))
    if run not in expand_runs(config, [run.study]):
        raise ConfigError(f"no configured run is called {run.id}")
    return run


def run_settings(config: dict, run: Run) -> dict:
    """Everything one training run needs, resolved from the study, its variant and the limits."""
    study = copy.deepcopy(config["studies"][run.study])
    grid_values = dict(variants(study))[run.variant]
    for key, value in grid_values.items():
        _set_path(study, key, value)
    limits = config.get("limits", {})
    recipe = dict(study["recipe"])
    if limits.get("max_epochs"):
        recipe["epochs"] = min(recipe.get("epochs", limits["max_epochs"]), limits["max_epochs"])
        recipe["max_epochs"] = min(recipe.get("max_epochs", limits["max_epochs"]), limits["max_epochs"])
    input_cfg = dict(study.get("input", {}))
    if limits.get("input_size") and input_cfg.get("size"):
        input_cfg["size"] = limits["input_size"]
    norm = config["normalization"][input_cfg.get("normalization", "unit")]
    pretrained = study.get("pretrained", False)
    if limits.get("pretrained") is not None:
        pretrained = pretrained and limits["pretrained"]
    trainable = config["freeze_levels"][run.freeze]
    return {
        "run_id": run.id,
        **run.wildcards,
        # The variant's values as configured, before limits cap them: what paper tables select by.
        "grid": grid_values,
        "seed": run.seed,
        "num_classes": DATASET_CLASSES[run.dataset],
        "in_channels": 3 if input_cfg.get("rgb") else DATASET_CHANNELS[run.dataset],
        "pretrained": pretrained,
        "trainable": trainable,
        "input": {"size": input_cfg.get("size"), "rgb": bool(input_cfg.get("rgb")),
                  "normalization": input_cfg.get("normalization", "unit"),
                  "mean": list(norm["mean"]), "std": list(norm["std"])},
        "augment": study.get("augment", "none"),
        "augment_copies": limits.get("augment_copies") or 10,
        "eval_split": study.get("eval_split", "test"),
        "val_fraction": study.get("val_fraction", 0.2),
        "recipe": recipe,
        "device": config.get("device", "auto"),
        "size_unit": (study.get("size_unit") or {}).get(run.dataset, "MiB"),
    }


def data_settings(config: dict, dataset: str) -> dict:
    """Source and sizes for one dataset: the global data settings with its per-dataset overrides."""
    data = config["data"]
    merged = {k: v for k, v in data.items() if k != "datasets"}
    merged.update(data.get("datasets", {}).get(dataset, {}))
    return merged


def studies_using(config: dict, dataset: str | None = None, model: str | None = None) -> list[str]:
    return [name for name, s in config["studies"].items()
            if (dataset is None or dataset in s["datasets"]) and (model is None or model in s["models"])]
