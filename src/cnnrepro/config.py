"""Configuration: validation against the schema and expansion of studies into training runs.

The unit of work is one training run, identified by study/dataset/model/freeze/variant/seed.
A variant is one combination of a study's ``grid`` (e.g. batch size x epochs); ``base`` when
the study has no grid.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
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


def load_schema(schema_path: str | Path = SCHEMA_PATH) -> dict:
    """The config schema, with the model, dataset and augmentation names taken from their registrations
    (read at each call, so a model registered at run time is a valid name)."""
    from cnnrepro import augment, datasets, models

    schema = copy.deepcopy(_schema_file(str(schema_path)))
    names = {"model_name": models.model_names(), "dataset_name": tuple(datasets.DATASETS),
             "augment_name": tuple(augment.AUGMENTATIONS)}
    for definition, values in names.items():
        schema["definitions"][definition]["enum"] = list(values)
    return schema


@functools.lru_cache(maxsize=None)
def _schema_file(path: str) -> dict:
    return load_yaml(path)


def _validator(schema: dict):
    """A validator that fills each missing property's ``default`` as it walks the instance.

    Defaults are set before the properties are checked, so a default object (``data: {}``) gets its own
    defaults filled too, and ``if``/``then`` branches (per optimizer, per schedule) add theirs.
    """
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if validator.is_type(instance, "object"):
            for key, sub in properties.items():
                if key not in instance and isinstance(sub, dict) and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": properties_with_defaults})(schema)


def _check_against(instance: Any, schema: dict, where: str = "") -> None:
    """Validate (filling defaults in place); raise ConfigError naming the first offending field."""
    import jsonschema

    errors = list(_validator(schema).iter_errors(instance))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    # oneOf errors hide the real cause in their context; show the deepest one.
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    field = _field_path([where, *error.absolute_path] if where else error.absolute_path)
    hint = ""
    if error.validator == "additionalProperties":
        hint = " (a misspelt or unknown key: see workflow/schemas/config.schema.yaml for the valid keys)"
    elif error.validator == "enum":
        hint = f"; valid values: {', '.join(map(str, error.validator_value))}"
    raise ConfigError(f"config error at '{field}': {error.message}{hint}")


def validate(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Check ``config`` against the schema in one pass that fills its defaults in place, then check what
    the schema cannot (names defined elsewhere in the config, files). Recipes are checked per run
    (:func:`run_settings`), after grid values are applied."""
    _check_against(config, load_schema(schema_path))
    check_semantics(config)
    return config


def load_config(path: str | Path = "config.yaml", overlays: Iterable[str | Path] = ()) -> dict:
    config = load_yaml(path)
    for overlay in overlays:
        config = deep_merge(config, load_yaml(overlay))
    validate(config)
    settings_by_run(config)  # every run's recipe is checked before anything runs
    return config


def normalizations(config: dict) -> dict[str, dict]:
    """Every normalisation a study can name: ``unit`` (pixels / 255 only, as the Keras studies), each dataset's
    own statistics under its name, then the config's named ones."""
    from cnnrepro.datasets import DATASETS

    named = {name: {"mean": list(info.mean), "std": list(info.std)} for name, info in DATASETS.items()}
    return {"unit": {"mean": [], "std": []}, **named, **config["normalization"]}


def paper_table_path(config: dict, table: dict) -> Path:
    """A study table's paper CSV: a bare file name lives in ``paper_tables_dir``; a path with a '/'
    (relative to the working directory, or absolute) is used as given, so a study can keep its own tables."""
    file = table["file"]
    return Path(file) if "/" in file else Path(config["paper_tables_dir"]) / file


def _check_names(config: dict, name: str, study: dict) -> None:
    """The freeze levels and the normalisation a study (or one of its variants) names are defined."""
    where, levels, norms = f"studies.{name}", config["freeze_levels"], normalizations(config)
    for i, level in enumerate(study["freeze"]):
        if level not in levels:
            raise ConfigError(f"config error at '{where}.freeze[{i}]': unknown freeze level '{level}'; "
                              f"defined levels: {', '.join(levels)}. Define it under 'freeze_levels'.")
    norm = study["input"]["normalization"]
    if norm not in norms:
        raise ConfigError(f"config error at '{where}.input.normalization': unknown normalization "
                          f"'{norm}'; defined: {', '.join(norms)}. Define it under 'normalization'.")


def check_semantics(config: dict) -> None:
    """What the schema cannot check: names defined elsewhere in the config, and files."""
    tables_dir = Path(config["paper_tables_dir"])
    table_names: dict[str, str] = {}  # output file name -> the field that claimed it first
    for name, study in config["studies"].items():
        where = f"studies.{name}"
        _check_names(config, name, study)
        for key in study["grid"]:
            if key not in GRID_KEYS and not key.startswith(GRID_PREFIXES):
                raise ConfigError(f"config error at '{where}.grid.{key}': a grid axis must be one of "
                                  f"{', '.join(GRID_KEYS)} or start with {' or '.join(GRID_PREFIXES)}")
        for i, table in enumerate(study["tables"]):
            path, field = paper_table_path(config, table), f"{where}.tables[{i}].file"
            if not path.is_file():
                raise ConfigError(f"config error at '{field}': {path} does not exist; a bare file name is looked "
                                  f"up in '{tables_dir}/', a path with a '/' is used as given")
            # Each table is written to tables/<file name>, so two with one name would overwrite each other.
            if path.name in table_names:
                raise ConfigError(f"config error at '{field}': '{table['file']}' has the same file name as "
                                  f"{table_names[path.name]}; both would be written to tables/{path.name}. "
                                  "Rename one of the CSVs.")
            table_names[path.name] = f"'{field}' ({path})"
    from cnnrepro.aggregate import check_table_notes  # here: aggregate imports this module

    try:
        check_table_notes(config)
    except ValueError as error:
        raise ConfigError(f"config error: {error}") from None
    for dataset, override in config["data"]["datasets"].items():
        source = override.get("source", config["data"]["source"])  # an override names only what it changes
        if source == "npz" and not override["npz"]:
            raise ConfigError(f"config error at 'data.datasets.{dataset}.npz': source npz needs "
                              "{train: path, test: path} (test may be left out with split_test_from_train)")


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
    grid = study["grid"]
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
    return any(all(fields.get(k) == v for k, v in rule.items()) for rule in study["exclude"])


def expand_runs(config: dict, studies: Iterable[str] | None = None) -> list[Run]:
    runs = []
    for name, study in config["studies"].items():
        if studies is not None and name not in studies:
            continue
        for dataset, model, freeze, (variant, combo), seed in itertools.product(
            study["datasets"], study["models"], study["freeze"], variants(study), study["seeds"],
        ):
            fields = {"dataset": dataset, "model": model, "freeze": freeze, "seed": seed, **combo}
            if not _excluded(study, fields):
                runs.append(Run(name, dataset, model, freeze, variant, seed))
    return runs


def benchmarked_runs(config: dict) -> dict[tuple[str, str, str, str], Run]:
    """(study, dataset, model, freeze) -> the run whose weights are benchmarked (its first variant and seed),
    for every study with ``benchmark`` on."""
    chosen: dict[tuple[str, str, str, str], Run] = {}
    for run in expand_runs(config):
        if config["studies"][run.study]["benchmark"]:
            chosen.setdefault((run.study, run.dataset, run.model, run.freeze), run)
    return chosen


def _fragment(schema: dict, definition: dict) -> dict:
    """A schema for one part of the config that can still follow the root's ``#/definitions/...`` refs."""
    return {"$schema": schema["$schema"], "definitions": {**schema["definitions"], "_part": definition},
            "$ref": "#/definitions/_part"}


def recipe_branches(schema: dict | None = None) -> dict[str, dict[str, set[str]]]:
    """{"optimizer": {"sgd": keys sgd uses, ...}, "schedule": {...}}, read from the recipe's if/then branches."""
    schema = schema or load_schema()
    out: dict[str, dict[str, set[str]]] = {}
    for branch in schema["definitions"]["recipe"]["allOf"]:
        ((selector, condition),) = branch["if"]["properties"].items()
        out.setdefault(selector, {})[condition["const"]] = set(branch["then"].get("properties", {}))
    return out


def check_recipe(recipe: dict, where: str, schema: dict | None = None) -> dict:
    """A copy of ``recipe`` checked against the schema with its defaults filled in; a key that the chosen
    optimizer or schedule does not use is an error naming the key and what the chosen one uses."""
    schema = schema or load_schema()
    recipe = copy.deepcopy(recipe)
    _check_against(recipe, _fragment(schema, schema["definitions"]["recipe"]), where)
    for selector, branches in recipe_branches(schema).items():
        chosen = recipe[selector]
        specific = set().union(*branches.values())
        for key in recipe:
            if key in specific and key not in branches[chosen]:
                uses = ", ".join(sorted(branches[chosen])) or "none of them"
                raise ConfigError(f"config error at '{where}.{key}': {selector} '{chosen}' does not use '{key}'; "
                                  f"of the {selector}-specific keys, {chosen} uses: {uses}")
    return recipe


def run_length_key(recipe: dict, schema: dict | None = None) -> str:
    """The recipe key that bounds a run's epochs: ``epochs`` (constant) or ``max_epochs`` (the others)."""
    return "epochs" if "epochs" in recipe_branches(schema)["schedule"][recipe["schedule"]] else "max_epochs"


def run_settings(config: dict, run: Run) -> dict:
    """Everything one training run needs, resolved from the study, its variant and the limits."""
    grid_values = dict(variants(config["studies"][run.study]))[run.variant]
    try:
        return _run_settings(config, run, grid_values)
    except ConfigError as error:
        if not grid_values:
            raise
        # The study's own values were checked at start-up; this variant's grid values are what is new.
        grid = ", ".join(f"{key}={value!r}" for key, value in grid_values.items())
        raise ConfigError(f"{error} (in variant {run.variant}, whose grid sets {grid})") from None


def _run_settings(config: dict, run: Run, grid_values: dict) -> dict:
    from cnnrepro import augment, datasets, models

    schema = load_schema()
    study = copy.deepcopy(config["studies"][run.study])
    for key, value in grid_values.items():
        _set_path(study, key, value)
    where = f"studies.{run.study}"
    if grid_values:  # grid values have not been checked yet
        _check_against(study, _fragment(schema, schema["properties"]["studies"]["additionalProperties"]), where)
        _check_names(config, run.study, study)
    recipe = check_recipe(study["recipe"], f"{where}.recipe", schema)
    limits = config["limits"]
    if limits["max_epochs"]:
        length = run_length_key(recipe, schema)
        recipe[length] = min(recipe[length], limits["max_epochs"])
    input_cfg = study["input"]
    if limits["input_size"] and input_cfg["size"]:
        input_cfg["size"] = limits["input_size"]
    norm = normalizations(config)[input_cfg["normalization"]]
    pretrained = study["pretrained"]
    if limits["pretrained"] is not None:
        pretrained = pretrained and limits["pretrained"]
    dataset = datasets.DATASETS[run.dataset]
    model_options = study["model_options"].get(run.model, {})
    accepted = models.get_spec(run.model).options
    for key in model_options:
        if key not in accepted:
            raise ConfigError(f"config error at '{where}.model_options.{run.model}.{key}': model {run.model} takes "
                              f"no option '{key}'; it accepts: {', '.join(accepted) or 'none'}")
    return {
        "run_id": run.id,
        **run.wildcards,
        # The variant's values as configured, before limits cap them: what paper tables select by.
        "grid": grid_values,
        "seed": run.seed,
        "num_classes": dataset.num_classes,
        "in_channels": 3 if input_cfg["rgb"] else dataset.channels,
        "pretrained": pretrained,
        "trainable": config["freeze_levels"][run.freeze],
        "input": {"size": input_cfg["size"], "rgb": input_cfg["rgb"], "normalization": input_cfg["normalization"],
                  "mean": list(norm["mean"]), "std": list(norm["std"])},
        "augment": study["augment"],
        "augment_copies": limits["augment_copies"] or augment.AUGMENTATIONS[study["augment"]].copies,
        "eval_split": study["eval_split"],
        "val_fraction": study["val_fraction"],
        "recipe": recipe,
        "device": config["device"],
        "speed": config["speed"],
        "model_options": model_options,
        "latency_data_parallel": study["latency_data_parallel"],
        "size_unit": study["size_unit"].get(run.dataset, "MiB"),
    }


def settings_by_run(config: dict) -> dict[str, dict]:
    """Every run's settings by run id, each recipe checked once: what the workflow looks jobs up in."""
    return {run.id: run_settings(config, run) for run in expand_runs(config)}


def data_settings(config: dict, dataset: str) -> dict:
    """Source and sizes for one dataset: the global data settings with its per-dataset overrides."""
    data = config["data"]
    override = copy.deepcopy(data["datasets"].get(dataset, {}))
    # A dataset without an override still gets the defaults of the keys only an override sets (npz, ...).
    schema = load_schema()
    _check_against(override, _fragment(schema, schema["properties"]["data"]["properties"]["datasets"][
        "additionalProperties"]), f"data.datasets.{dataset}")
    return {**{k: v for k, v in data.items() if k != "datasets"}, **override}
