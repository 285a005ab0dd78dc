"""Configuration: validation against the schema and expansion of studies into training runs.

The unit of work is one training run, identified by study/dataset/model/freeze/variant/seed.
A variant is one combination of a study's ``grid`` (e.g. batch size x epochs); ``base`` when
the study has no grid.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import jsonschema
import torch
import yaml

from cnnrepro import models
from cnnrepro.data import declared
from cnnrepro.data.augment import AUGMENTATIONS
from cnnrepro.data.catalog import DATASETS, DatasetInfo
from cnnrepro.models import zoo

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
GRID_PREFIXES = ("recipe.", "input.")
GRID_KEYS = ("augment", "pretrained", "eval_split", "val_fraction")
# A sweep variant's id: its grid variant's, this separator, then the setting and the value it tries.
SWEEP_SEPARATOR = "__"


class ConfigError(ValueError):
    """A configuration problem, with the offending field named in the message."""


class BenchKey(NamedTuple):
    """What a benchmark measures: the model of one (study, dataset, model, freeze level), trained by the first
    variant and seed of its runs (:func:`benchmarked_runs`)."""

    study: str
    dataset: str
    model: str
    freeze: str

    @classmethod
    def of(cls, record: dict) -> "BenchKey":
        """The key of a benchmark record, a run's settings or its summary (each holds the four fields)."""
        return cls(*(record[name] for name in cls._fields))


# A benchmark's folder under bench/ (workflow/rules/bench.smk), from its key's fields.
BENCH_PATTERN = "{study}/{dataset}/{model}/{freeze}"
# A run's id, which is also its folder under runs/, checkpoints/ and logs/ (workflow/rules/engine.smk).
RUN_PATTERN = "{study}/{dataset}/{model}/{freeze}/{variant}/seed{seed}"


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
        return RUN_PATTERN.format(**self.wildcards)

    @property
    def wildcards(self) -> dict[str, str]:
        return {"study": self.study, "dataset": self.dataset, "model": self.model,
                "freeze": self.freeze, "variant": self.variant, "seed": str(self.seed)}

    @property
    def bench_key(self) -> BenchKey:
        return BenchKey(self.study, self.dataset, self.model, self.freeze)


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
    """A YAML file as a dict; a syntax error is a ConfigError naming the file, the line and the column."""
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = " ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
            raise ConfigError(f"config error in {path}{where}: YAML syntax error: {problem or error}; fix the "
                              "YAML there (a bracket or quote left open, a tab in the indentation, a missing ': ')"
                              ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config error in {path}: expected keys at the top level (a YAML mapping), found "
                          f"{type(loaded).__name__} {loaded!r}")
    return loaded


def _field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def load_schema() -> dict:
    """A copy of :func:`config_schema` the caller may change."""
    return copy.deepcopy(config_schema())


def config_schema() -> dict:
    """The config schema, with the model and augmentation names taken from their registrations (read at each call,
    so a model registered at run time is a valid name; dataset names are checked against the built-in and declared
    ones by :func:`check_semantics`). Shared: never change it."""
    return _named_schema(str(SCHEMA_PATH), tuple(models.model_names()), tuple(AUGMENTATIONS))


@functools.lru_cache(maxsize=16)
def _named_schema(path: str, model_names: tuple, augment_names: tuple) -> dict:
    schema = copy.deepcopy(_schema_file(path))
    names = {"model_name": model_names, "augment_name": augment_names}
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
    return _filling_validator_class(jsonschema.validators.validator_for(schema))(schema)


@functools.lru_cache(maxsize=None)
def _filling_validator_class(base):
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if validator.is_type(instance, "object"):
            for key, sub in properties.items():
                if key not in instance and isinstance(sub, dict) and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": properties_with_defaults})


def _check_finite(instance: Any, parts: list) -> None:
    """YAML reads .nan and .inf as numbers, which every bound of the schema lets through (a comparison with NaN is
    false): refuse them wherever they are."""
    if isinstance(instance, float) and not math.isfinite(instance):
        raise ConfigError(f"config error at '{_field_path(parts)}': {instance} is not a finite number; give a "
                          "finite one (e.g. 1.0e-3)")
    items = instance.items() if isinstance(instance, dict) else enumerate(instance) if isinstance(instance, list) \
        else ()
    for key, value in items:
        _check_finite(value, [*parts, key])


def _check_against(instance: Any, schema: dict, where: str = "") -> None:
    """Validate (filling defaults in place); raise ConfigError naming the first offending field, its value and,
    where the schema has a fixed set, the accepted values or keys."""
    _check_finite(instance, [where] if where else [])
    errors = list(_validator(schema).iter_errors(instance))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    # oneOf errors hide the real cause in their context; show the deepest one, unless every alternative failed on
    # the value itself and the schema says in words what it accepts.
    while error.context:
        if error.schema.get("description") and all(not sub.relative_path for sub in error.context):
            break
        error = jsonschema.exceptions.best_match(error.context)
    parts = [where, *error.absolute_path] if where else list(error.absolute_path)
    message, hint = error.message, ""
    if error.context:
        message = f"{error.instance!r} is not {error.schema['description']}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        # Name the misspelt key itself, and every key that is valid at its level.
        parts.append(unknown[0])
        message = f"unknown key '{unknown[0]}' (misspelt?)"
        hint = (f"; valid keys in '{_field_path(parts[:-1])}': {', '.join(known)}" if known else
                f" (see {SCHEMA_PATH.relative_to(REPO_ROOT)})")
    elif error.validator == "required":
        missing = next((key for key in error.validator_value if key not in error.instance), None)
        if missing is not None:
            parts.append(missing)
            message = f"required key '{missing}' is missing"
    elif "propertyNames" in error.schema_path:
        # A name used as a key (a dataset under data.datasets, a model under model_options, ...).
        parts.append(error.instance)
        message = f"unknown name '{error.instance}'" if error.validator == "enum" else error.message
    elif error.validator == "enum":
        message = f"{error.instance!r} is not a valid value"
    if error.validator == "enum":
        hint = f"; valid values: {', '.join(map(str, error.validator_value))}"
    raise ConfigError(f"config error at '{_field_path(parts)}': {message}{hint}")


def _named_models(config: dict) -> Iterable[tuple[str, Any]]:
    """(field, name) of every place a study names a model, read before the schema check (whose list of model names
    must hold them): defensive, the config is not checked yet."""
    studies = config.get("studies")
    for study_name, study in (studies.items() if isinstance(studies, dict) else ()):
        if not isinstance(study, dict):
            continue
        where = f"studies.{study_name}"
        listed = study.get("models")
        yield from ((f"{where}.models[{i}]", name) for i, name in enumerate(listed if isinstance(listed, list) else ()))
        options = study.get("model_options")
        yield from ((f"{where}.model_options.{name}", name) for name in (options if isinstance(options, dict) else ()))
        figures = study.get("figures") if isinstance(study.get("figures"), dict) else {}
        kernels = figures.get("kernels") if isinstance(figures.get("kernels"), list) else ()
        yield from ((f"{where}.figures.kernels[{i}]", name) for i, name in enumerate(kernels))
        rules = study.get("exclude") if isinstance(study.get("exclude"), list) else ()
        yield from ((f"{where}.exclude[{i}].model", rule["model"]) for i, rule in enumerate(rules)
                    if isinstance(rule, dict) and "model" in rule)


def register_named_models(config: dict) -> None:
    """Register every torchvision zoo model (``torchvision.<builder>``) the studies name, so the schema knows it;
    an unknown one is an error naming the field and the closest names."""
    for field, name in _named_models(config):
        if zoo.is_zoo_name(name):
            try:
                zoo.register(name)
            except zoo.UnknownZooModel as error:
                raise ConfigError(f"config error at '{field}': {error}") from None


def load_model_files(config: dict) -> None:
    """Import the config's model files (before the schema check, whose list of model names must hold their models);
    a file that fails is an error naming the field, the file, the line and the error."""
    files = config.get("model_files")
    if not isinstance(files, list):
        return  # the schema says what is wrong with it
    for i, path in enumerate(files):
        if isinstance(path, str) and path:
            try:
                models.load_model_file(path)
            except models.ModelFileError as error:
                raise ConfigError(f"config error at 'model_files[{i}]': {error}") from None


def check_schema(config: dict) -> dict:
    """The schema's check alone (defaults filled in place), after registering the models the config names: for a
    command that needs the config's values before its datasets' facts can be read (cnnrepro download)."""
    load_model_files(config)
    register_named_models(config)
    _check_against(config, config_schema())
    return config


def validate(config: dict) -> dict:
    """Check ``config`` against the schema in one pass that fills its defaults in place, then check what
    the schema cannot (names defined elsewhere in the config, files). Recipes are checked per run
    (:func:`run_settings`), after grid values are applied."""
    load_model_files(config)
    register_named_models(config)
    _check_against(config, config_schema())
    apply_min_seeds(config)
    check_semantics(config)
    return config


# --- seeds: a grid axis every study has (the report shows mean ± std and a 95 % interval over them) ---


def apply_min_seeds(config: dict) -> None:
    """With ``min_seeds`` n, every study runs at least n seeds: its own, then the integers after its largest
    (seed 003's [42] becomes [42, 43, 44] for n = 3). In place, as the schema's defaults are filled."""
    wanted = config.get("min_seeds")
    if not wanted:
        return
    for study in config["studies"].values():
        seeds = list(study["seeds"])
        while len(seeds) < wanted:
            seeds.append(max(seeds) + 1)
        study["seeds"] = seeds


# A study's input.size or input.normalization that each run takes from its model (its weights' own transforms).
MODEL_NATIVE = "model"
# A study's input.normalization by the train split's own mean and std, computed when the dataset is prepared.
AUTO_NORMALIZATION = "auto"
PER_RUN_NORMALIZATIONS = (MODEL_NATIVE, AUTO_NORMALIZATION)


def normalizations(config: dict) -> dict[str, dict]:
    """Every normalisation a study can name with fixed statistics: ``unit`` (pixels / 255 only, as the Keras
    studies), each built-in dataset's own statistics under its name, then the config's named ones. Besides these, a
    study can name ``model`` (its model's weights' statistics, per run)."""
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
    if norm not in norms and norm not in PER_RUN_NORMALIZATIONS:
        raise ConfigError(f"config error at '{where}.input.normalization': unknown normalization "
                          f"'{norm}'; defined: {', '.join([*norms, *PER_RUN_NORMALIZATIONS])}. Define it under "
                          "'normalization'.")


def _grid_axes(schema: dict) -> dict[str, list[str]]:
    """Every valid grid axis: the plain keys, then each prefix with the keys it may be followed by."""
    study = schema["properties"]["studies"]["additionalProperties"]["properties"]
    return {"": list(GRID_KEYS), "recipe.": list(schema["definitions"]["recipe"]["properties"]),
            "input.": list(study["input"]["properties"])}


def _axis_problem(schema: dict, key: str) -> str | None:
    """Why ``key`` names no setting a grid (or an assumption) can vary, or None."""
    axes = _grid_axes(schema)
    prefix = next((p for p in GRID_PREFIXES if key.startswith(p)), "")
    if key[len(prefix):] in axes[prefix]:
        return None
    valid = "; ".join([", ".join(GRID_KEYS), *(f"{p}<key> with <key> one of {', '.join(axes[p])}"
                                               for p in GRID_PREFIXES)])
    return f"unknown grid axis '{key}' (misspelt?); a grid axis is one of: {valid}"


def _check_grid(schema: dict, where: str, study: dict) -> None:
    for key in study["grid"]:
        if problem := _axis_problem(schema, key):
            raise ConfigError(f"config error at '{where}.grid.{key}': {problem}")


# Run fields an exclude rule can name besides the study's grid axes.
EXCLUDE_FIELDS = ("dataset", "model", "freeze", "seed")


def _check_exclude(config: dict, where: str, study: dict) -> None:
    """An exclude rule names run fields (a misspelt one would silently exclude nothing) and known names."""
    for i, rule in enumerate(study["exclude"]):
        if not rule:
            raise ConfigError(f"config error at '{where}.exclude[{i}]': an empty rule {{}} would exclude every run; "
                              f"a rule names run fields: {', '.join([*EXCLUDE_FIELDS, *study['grid']])}")
        _check_run_fields(config, f"{where}.exclude[{i}]", study, rule, "an exclude rule", "excludes nothing")


def _check_run_fields(config: dict, field: str, study: dict, rule: dict, what: str, effect: str) -> None:
    """A rule of run fields (an exclude rule, an assumption's ``where``) names fields runs have and values they
    take: a misspelt one would silently match no run."""
    fields = [*EXCLUDE_FIELDS, *study["grid"]]
    known = {"dataset": dataset_names(config), "model": models.model_names(),
             "freeze": tuple(config["freeze_levels"])}
    for key, value in rule.items():
        if key not in fields:
            raise ConfigError(f"config error at '{field}.{key}': unknown run field '{key}' (misspelt?); {what} "
                              f"matches runs by: {', '.join(fields)}")
        if key in known and value not in known[key]:
            raise ConfigError(f"config error at '{field}.{key}': unknown {key} {value!r}; valid values: "
                              f"{', '.join(map(str, known[key]))}")
        if key in study["grid"] and value not in study["grid"][key]:
            study_field = ".".join(field.split(".")[:2])
            raise ConfigError(f"config error at '{field}.{key}': {value!r} is none of the values "
                              f"'{study_field}.grid.{key}' takes, so the rule {effect}; valid values: "
                              f"{', '.join(map(str, study['grid'][key]))}")


def _check_normalizations(config: dict) -> None:
    for name, norm in config["normalization"].items():
        if len(norm["mean"]) != len(norm["std"]):
            raise ConfigError(f"config error at 'normalization.{name}': mean has {len(norm['mean'])} values "
                              f"({norm['mean']}) but std has {len(norm['std'])} ({norm['std']}); give one per "
                              "channel (or one for all channels) in both")


def _check_data(config: dict) -> None:
    """Each dataset's source can deliver both splits: npz files named and on disk, a test split carved only
    where the source has none, a declared dataset's facts readable. Checked for every dataset a study uses (its
    files are needed) and, for what the files cannot change, for every per-dataset override."""
    used = {dataset for study in config["studies"].values() for dataset in study["datasets"]}
    for dataset in sorted(used | set(config["data"]["datasets"])):
        where = f"data.datasets.{dataset}"
        settings = data_settings(config, dataset)
        source, npz, carve = settings["source"], settings["npz"], settings["split_test_from_train"]
        origin = (f"{where}.source" if "source" in config["data"]["datasets"].get(dataset, {})
                  else "data.source")
        has_test = _source_has_test(config, dataset, settings)
        if source == "npz":
            if not npz:
                raise ConfigError(f"config error at '{where}.npz': source npz (set by '{origin}') needs "
                                  "{train: path, test: path} (test may be left out with split_test_from_train)")
            if dataset in used:
                for split, path in npz.items():
                    if not Path(path).is_file():
                        raise ConfigError(
                            f"config error at '{where}.npz.{split}': {path} does not exist (relative paths are "
                            f"resolved against the working directory, {Path.cwd()}); expected an npz file with keys "
                            f"x (uint8 [N,H,W] or [N,H,W,C]) and y, or set '{where}.source' to torchvision or "
                            "synthetic")
        elif npz:
            raise ConfigError(f"config error at '{where}.npz': npz files are given but the source is {source} "
                              f"(set by '{origin}'), which never reads them; set '{where}.source: npz' or drop npz")
        if has_test and carve is not None:
            given = (f"'{where}.npz.test' gives one ({npz['test']})" if source == "npz" else
                     f"'{where}.test' gives one" if source == "imagefolder" else
                     f"the {source} source (set by '{origin}') has its own test split")
            raise ConfigError(f"config error at '{where}.split_test_from_train': {carve} asks to carve a test split "
                              f"from the training data, but {given}; use one or the other")
        if not has_test and carve is None:
            what = "no test file (npz.test)" if source == "npz" else f"no test split ({source} source)"
            raise ConfigError(f"config error at '{where}.{'npz' if source == 'npz' else 'split_test_from_train'}': "
                              f"{what} and no split_test_from_train; give one of them")


def _source_has_test(config: dict, dataset: str, settings: dict) -> bool:
    """Whether the dataset's source gives a test split of its own (else one is carved: split_test_from_train)."""
    source = settings["source"]
    if source == "npz":
        return bool(settings["npz"]) and "test" in settings["npz"]
    if dataset in DATASETS or source == "synthetic":
        return True
    if source == "imagefolder":
        return "test" in settings
    return "test" in declared.split_arguments(settings)


def declared_datasets(config: dict) -> list[str]:
    """The datasets a config declares under data.datasets (names that are not built in)."""
    return [name for name in config["data"]["datasets"] if name not in DATASETS]


def dataset_names(config: dict) -> tuple[str, ...]:
    return (*DATASETS, *declared_datasets(config))


# The keys that declare a dataset of one's own (a built-in one keeps its own data).
DECLARING_KEYS = ("class", "args", "splits", "train", "test", "store_size")


def _check_declarations(config: dict) -> None:
    """Every name under data.datasets is a built-in dataset (overridden) or declares one; every dataset a study,
    a size unit or an exclude rule names exists."""
    builtin = ", ".join(DATASETS)
    for name, declaration in config["data"]["datasets"].items():
        where = f"data.datasets.{name}"
        declaring = [key for key in DECLARING_KEYS if key in declaration]
        if name in DATASETS and declaring:
            raise ConfigError(f"config error at '{where}.{declaring[0]}': {name} is a built-in dataset, whose data "
                              "is its own; declare your dataset under a name of its own (data.datasets.<name>)")
        if name in DATASETS and declaration.get("source") == "imagefolder":
            raise ConfigError(f"config error at '{where}.source': {name} is a built-in dataset; image folders are "
                              "a dataset of their own: declare it under another name")
        if name not in DATASETS and not ({"class", "train"} & set(declaration)):
            raise ConfigError(f"config error at '{where}': '{name}' is not a built-in dataset (valid values: "
                              f"{builtin}) and declares none of its own: give class (a torchvision dataset, e.g. "
                              "class: FashionMNIST) or train (an image folder with one sub-folder per class)")
        if name not in DATASETS:
            source = data_settings(config, name)["source"]
            needs = {"torchvision": "class", "imagefolder": "train"}.get(source)
            if needs and needs not in declaration:
                origin = f"{where}.source" if "source" in declaration else "data.source"
                raise ConfigError(f"config error at '{where}.{needs}': source {source} (set by '{origin}') reads "
                                  f"{'a torchvision class' if needs == 'class' else 'image folders'}, but {name} "
                                  f"declares no {needs}; give it, or set '{where}.source'")
    known = dataset_names(config)
    valid = f"valid values: {', '.join(known)} (the built-in ones and those declared under data.datasets)"
    for study_name, study in config["studies"].items():
        for i, dataset in enumerate(study["datasets"]):
            if dataset not in known:
                raise ConfigError(f"config error at 'studies.{study_name}.datasets[{i}]': unknown dataset "
                                  f"'{dataset}'; {valid}")
        for dataset in study["size_unit"]:
            if dataset not in known:
                raise ConfigError(f"config error at 'studies.{study_name}.size_unit.{dataset}': unknown dataset "
                                  f"'{dataset}'; {valid}")


def declared_facts(config: dict, name: str) -> declared.Facts:
    """What a declared dataset holds (classes, channels, sizes), read from its data before any job."""
    try:
        return declared.facts_of(config["data"]["datasets"][name], config["data_root"])
    except declared.DeclarationError as error:
        raise ConfigError(f"config error at 'data.datasets.{name}.{error.key}': {error}") from None


def _study_sizes(config: dict, name: str) -> Iterable[int]:
    """The input sizes the runs on dataset ``name`` feed their models (input.size after the limits), where set, and
    those an assumption tries."""
    limit = config["limits"]["input_size"]
    for study in config["studies"].values():
        if name not in study["datasets"]:
            continue
        # An assumption's other sizes count whether or not they are swept: the stored size stays the same either way.
        tried = (value for a in study.get("assumptions", ()) if a["key"] == "input.size" for value in a["alternatives"])
        for size in (study["input"]["size"], *study["grid"].get("input.size", ()), *tried):
            if size == MODEL_NATIVE:
                yield from (limit or _native_input(m, study["model_options"].get(m, {}))[0] for m in study["models"])
            elif size:
                yield limit or size


def store_size(config: dict, name: str, facts: declared.Facts) -> int:
    """The side a declared dataset's images are stored at: its store_size, else the largest input size of the runs
    on it, else the images' own when all are square and of one size."""
    declaration = config["data"]["datasets"][name]
    if declaration.get("store_size"):
        return declaration["store_size"]
    sizes = list(_study_sizes(config, name))
    if sizes:
        return max(sizes)
    if facts.native_size:
        return facts.native_size
    raise ConfigError(f"config error at 'data.datasets.{name}.store_size': the images of {name} ({facts.origin}) "
                      "are not all square and of one size, and no study that uses it sets input.size; set store_size "
                      "(the side every image is resized to when it is prepared) or the studies' input.size")


def dataset_classes(config: dict, name: str) -> int:
    """How many classes a dataset has, without its stored size (which needs the models of the studies using it)."""
    return DATASETS[name].num_classes if name in DATASETS else len(declared_facts(config, name).classes)


def dataset_info(config: dict, name: str) -> DatasetInfo:
    """What a dataset holds: a built-in one's catalog entry, or a declared one's facts at its stored size."""
    if name in DATASETS:
        return DATASETS[name]
    facts = declared_facts(config, name)
    declaration = config["data"]["datasets"][name]
    return DatasetInfo(name=name, torchvision_class=declaration.get("class", ""), channels=facts.channels,
                       size=store_size(config, name, facts), num_classes=len(facts.classes), classes=facts.classes,
                       raw_files=(), mean=(), std=(), split_sizes=dict(facts.split_sizes))


# The config's folders: each is created where it does not exist yet.
FOLDER_KEYS = ("results", "data_root", "weights_dir")


def _check_folders(config: dict) -> None:
    """A folder the workflow writes into must not be an existing file (nor lie below one)."""
    for key in FOLDER_KEYS:
        path = Path(config[key])
        blocker = next((p for p in (path, *path.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            below = "" if blocker == path else f" ({path} would lie inside it)"
            raise ConfigError(f"config error at '{key}': {blocker} is an existing file, not a folder{below}; "
                              f"'{key}' names the folder the workflow writes into: give a folder (it is created "
                              "when missing), or move the file away")


def declared_value(study: dict, key: str, recipe_field: str = "recipe") -> Any:
    """The value a study uses for a setting (a grid axis), its recipe's defaults filled in (``recipe_field``: where
    an error in the recipe is reported)."""
    if key.startswith("recipe."):
        return check_recipe(study["recipe"], recipe_field).get(key.removeprefix("recipe."))
    return get_path(study, key)


def _check_assumptions(config: dict, name: str, study: dict, full: dict) -> None:
    """Each assumption names a setting the study could vary, one the grid does not already vary, runs that exist,
    and alternatives that differ from the study's value and are valid values of that setting."""
    where = f"studies.{name}"
    for i, assumption in enumerate(study["assumptions"]):
        field, key = f"{where}.assumptions[{i}]", assumption["key"]
        if problem := _axis_problem(full, key):
            raise ConfigError(f"config error at '{field}.key': {problem}")
        if key in study["grid"]:
            raise ConfigError(f"config error at '{field}.key': '{key}' is an axis of '{where}.grid', which runs each "
                              "of its values already; an assumption is a setting the study fixes")
        _check_run_fields(config, f"{field}.where", study, assumption["where"], "an assumption's where",
                          "concerns no run")
        declared = declared_value(study, key, f"{where}.recipe")
        for j, value in enumerate(assumption["alternatives"]):
            here = f"{field}.alternatives[{j}]"
            if str(value) == str(declared):
                raise ConfigError(f"config error at '{here}': {value!r} is the value the study uses ({key} = "
                                  f"{declared!r}); alternatives are the other values")
            trial = copy.deepcopy({k: v for k, v in study.items() if k != "tables"})
            apply_setting(trial, key, value)
            try:
                _check_against(trial, _fragment(full, full["properties"]["studies"]["additionalProperties"]), where)
                _check_names(config, name, trial)
                check_recipe(trial["recipe"], f"{where}.recipe", full)
            except ConfigError as error:
                raise ConfigError(f"config error at '{here}': {value!r} is not a valid value of {key}: "
                                  f"{str(error).removeprefix('config error ')}") from None


def check_semantics(config: dict) -> None:
    """What the schema cannot check: names defined elsewhere in the config, npz files, folders that are files.
    (Each stage checks what it will read on top of this before any job runs: cnnrepro.startup.)"""
    full = config_schema()
    _check_folders(config)
    _check_declarations(config)
    _check_normalizations(config)
    for name, study in config["studies"].items():
        where = f"studies.{name}"
        _check_names(config, name, study)
        _check_grid(full, where, study)
        _check_exclude(config, where, study)
        _check_assumptions(config, name, study, full)
    _check_data(config)


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


@dataclass(frozen=True)
class Variant:
    """One setting of a study's runs: a combination of its grid (``assumption`` None) or, in a sweep, that
    combination with one assumption's setting changed to one of its alternatives."""

    id: str
    grid: dict[str, Any]  # the grid's values, as configured
    assumption: dict[str, Any] | None = None  # {"index", "key", "value", "basis"} of a sweep variant


def _slug(value: Any) -> str:
    """A value as a run path shows it."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value)).strip("_") or "none"


def study_variants(config: dict, study: dict) -> list[Variant]:
    """The study's grid variants, then (with ``sweep_assumptions``) for each assumption and each of its alternatives
    every grid variant again with that one setting changed: one at a time, not the product."""
    base = [Variant(name, combo) for name, combo in variants(study)]
    if not config["sweep_assumptions"]:
        return base
    sweep = [Variant(sweep_variant_id(variant.id, assumption["key"], value), variant.grid,
                     {"index": index, "key": assumption["key"], "value": value, "basis": assumption["basis"]})
             for index, assumption in enumerate(study["assumptions"])
             for value in assumption["alternatives"]
             if _limited(config, assumption["key"], value) != _limited(config, assumption["key"],
                                                                         declared_value(study, assumption["key"]))
             for variant in base]
    return base + sweep


def sweep_variant_id(variant: str, key: str, value: Any) -> str:
    """The variant of a sweep's run: the grid variant it changes, then the setting and the value it tries."""
    return f"{variant}{SWEEP_SEPARATOR}{key}-{_slug(value)}"


def _limited(config: dict, key: str, value: Any) -> Any:
    """A setting's value as a run gets it under the configuration's ``limits`` (a preset's caps): where the caps
    make an alternative the study's own value, its runs would repeat the study's and are not made."""
    limits = config["limits"]
    if key in ("recipe.epochs", "recipe.max_epochs") and limits["max_epochs"]:
        return min(value, limits["max_epochs"])
    if key == "input.size" and limits["input_size"] and value:
        return limits["input_size"]
    if key == "pretrained" and limits["pretrained"] is not None:
        return value and limits["pretrained"]
    return value


def _excluded(study: dict, fields: dict[str, Any]) -> bool:
    return any(all(fields.get(k) == v for k, v in rule.items()) for rule in study["exclude"])


def _concerns(study: dict, variant: Variant, fields: dict[str, Any]) -> bool:
    """Whether a run with these fields belongs to ``variant``: every grid variant does; a sweep variant only where
    its assumption's ``where`` selects the run (the other runs do not depend on the setting: not repeated)."""
    if variant.assumption is None:
        return True
    where = study["assumptions"][variant.assumption["index"]]["where"]
    return all(str(fields.get(key)) == str(value) for key, value in where.items())


def expand_runs(config: dict, studies: Iterable[str] | None = None) -> list[Run]:
    """Every run of the configuration, study by study: its grid's runs, then its sweep's (``sweep_assumptions``)."""
    runs = []
    for name, study in config["studies"].items():
        if studies is not None and name not in studies:
            continue
        all_variants = study_variants(config, study)
        for group in ([v for v in all_variants if v.assumption is None], [v for v in all_variants if v.assumption]):
            for dataset, model, freeze, variant, seed in itertools.product(
                study["datasets"], study["models"], study["freeze"], group, study["seeds"],
            ):
                fields = {"dataset": dataset, "model": model, "freeze": freeze, "seed": seed, **variant.grid}
                if not _excluded(study, fields) and _concerns(study, variant, fields):
                    runs.append(Run(name, dataset, model, freeze, variant.id, seed))
    return runs


def benchmarked_runs(config: dict) -> dict[BenchKey, Run]:
    """Each benchmark's key -> the run whose weights it measures (the key's first variant and seed), for every
    study with ``benchmark`` on."""
    chosen: dict[BenchKey, Run] = {}
    for run in expand_runs(config):
        if config["studies"][run.study]["benchmark"]:
            chosen.setdefault(run.bench_key, run)
    return chosen


def _fragment(schema: dict, definition: dict) -> dict:
    """A schema for one part of the config that can still follow the root's ``#/definitions/...`` refs."""
    return {"$schema": schema["$schema"], "definitions": {**schema["definitions"], "_part": definition},
            "$ref": "#/definitions/_part"}


def defaults(key: str) -> Any:
    """The schema's defaults of the top-level config block ``key`` (``verdicts``, ``benchmark``, ...), filled as
    validation fills them: for code that takes such a block outside a validated config."""
    full = config_schema()
    value: dict = {}
    _check_against(value, _fragment(full, full["properties"][key]), key)
    return value


def recipe_branches(schema: dict | None = None) -> dict[str, dict[str, set[str]]]:
    """{"optimizer": {"sgd": keys sgd uses, ...}, "schedule": {...}}, read from the recipe's if/then branches."""
    schema = schema or config_schema()
    out: dict[str, dict[str, set[str]]] = {}
    for branch in schema["definitions"]["recipe"]["allOf"]:
        ((selector, condition),) = branch["if"]["properties"].items()
        out.setdefault(selector, {})[condition["const"]] = set(branch["then"].get("properties", {}))
    return out


def check_recipe(recipe: dict, where: str, schema: dict | None = None) -> dict:
    """A copy of ``recipe`` checked against the schema with its defaults filled in; a key that the chosen
    optimizer or schedule does not use is an error naming the key and what the chosen one uses."""
    schema = schema or config_schema()
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


def run_settings(config: dict, run: Run, probe_models: bool = True) -> dict:
    """Everything one training run needs, resolved from the study, its variant and the limits. ``probe_models``
    False leaves out the model checks on the meta device (a job's own snakemake process, whose configuration the
    workflow's main process checked before submitting it)."""
    variant = {v.id: v for v in study_variants(config, config["studies"][run.study])}[run.variant]
    try:
        return _run_settings(config, run, variant, probe_models)
    except ConfigError as error:
        if not variant.grid and not variant.assumption:
            raise
        # The study's own values were checked at start-up; this variant's grid values are what is new.
        sets = [f"whose grid sets {', '.join(f'{k}={v!r}' for k, v in variant.grid.items())}"] if variant.grid else []
        if variant.assumption:
            sets.append(f"which tries {variant.assumption['key']}={variant.assumption['value']!r}, an assumption's "
                        "alternative")
        raise ConfigError(f"{error} (in variant {run.variant}, {' and '.join(sets)})") from None


def apply_setting(study: dict, key: str, value: Any) -> None:
    """Set one of a study's settings in place (a grid axis: ``recipe.lr``, ``augment``, ...). Switching the
    optimizer or the schedule drops the recipe keys only the previous one used (seed 000's momentum when an
    alternative is Adam); the schema fills the new one's defaults."""
    _set_path(study, key, value)
    selector = key.removeprefix("recipe.")
    branches = recipe_branches().get(selector) if key.startswith("recipe.") else None
    if branches and value in branches:
        others = set().union(*branches.values()) - branches[value]
        for unused in others & set(study["recipe"]):
            del study["recipe"][unused]


def _run_settings(config: dict, run: Run, variant: Variant, probe_models: bool = True) -> dict:
    schema = config_schema()
    grid_values = variant.grid
    # The study's tables were checked at start-up and settle nothing about a run: not copied for each one.
    study = {key: copy.deepcopy(value) for key, value in config["studies"][run.study].items() if key != "tables"}
    for key, value in grid_values.items():
        _set_path(study, key, value)
    if variant.assumption:
        apply_setting(study, variant.assumption["key"], variant.assumption["value"])
    where = f"studies.{run.study}"
    if grid_values or variant.assumption:  # grid and sweep values have not been checked yet
        _check_against(study, _fragment(schema, schema["properties"]["studies"]["additionalProperties"]), where)
        _check_names(config, run.study, study)
    recipe = check_recipe(study["recipe"], f"{where}.recipe", schema)
    limits = config["limits"]
    if limits["max_epochs"]:
        length = run_length_key(recipe, schema)
        recipe[length] = min(recipe[length], limits["max_epochs"])
    input_cfg = study["input"]
    pretrained = study["pretrained"]
    if limits["pretrained"] is not None:
        pretrained = pretrained and limits["pretrained"]
    dataset = dataset_info(config, run.dataset)
    model_options = _model_options(run, study, where)
    settings = {
        "run_id": run.id,
        **run.wildcards,
        # The variant's values as configured, before limits cap them: what paper tables select by.
        "grid": grid_values,
        "seed": run.seed,
        "num_classes": dataset.num_classes,
        "in_channels": 3 if input_cfg["rgb"] else dataset.channels,
        "pretrained": pretrained,
        "trainable": config["freeze_levels"][run.freeze],
        "input": _run_input(config, run, input_cfg, model_options, where),
        "augment": study["augment"],
        "augment_copies": limits["augment_copies"] or AUGMENTATIONS[study["augment"]].copies,
        "eval_split": study["eval_split"],
        "val_fraction": study["val_fraction"],
        "recipe": recipe,
        "device": config["device"],
        "speed": config["speed"],
        "model_options": model_options,
        "latency_data_parallel": study["latency_data_parallel"],
        "size_unit": study["size_unit"].get(run.dataset, "MiB"),
    }
    if variant.assumption:  # only a sweep's runs say so: a declared run's settings are as without assumptions
        settings["assumption"] = dict(variant.assumption)
    if run.dataset not in DATASETS:
        # A declared dataset's runs: images as stored unless input.size says otherwise; its class names (figures).
        settings["input"]["size"] = settings["input"]["size"] or dataset.size
        settings["classes"] = list(dataset.classes)
    source = models.source_of(run.model)
    if source is not None:
        # The file's content is part of the run: an edit reruns the runs of its models, and only those.
        settings["model_file"] = {"path": source.path, "sha256": source.sha256}
    if probe_models:
        _check_model(config, run, study, settings, where)
    return settings


def _model_options(run: Run, study: dict, where: str) -> dict:
    """The study's options for the run's model: each one its builder accepts, a weights member its enum has."""
    options = study["model_options"].get(run.model, {})
    accepted = models.get_spec(run.model).options
    field = f"{where}.model_options.{run.model}"
    for key in options:
        if key not in accepted:
            raise ConfigError(f"config error at '{field}.{key}': model {run.model} takes no option '{key}'; it "
                              f"accepts: {', '.join(accepted) or 'none'}")
    if zoo.WEIGHTS_OPTION in options:
        try:
            models.weights_member(run.model, options)
        except ValueError as error:
            raise ConfigError(f"config error at '{field}.{zoo.WEIGHTS_OPTION}': {error}") from None
    return options


def _native_input(model: str, options: dict) -> tuple[int, list, list]:
    """The input a model was made for: its weights' own side, mean and std (the member its options name), or its
    registered side without a normalisation of its own."""
    if models.get_spec(model).pretrained_weights is not None:
        return models.weights_transforms(model, options)
    return models.get_spec(model).input_size, [], []


def _run_input(config: dict, run: Run, input_cfg: dict, options: dict, where: str) -> dict:
    """The run's input: ``size: model`` and ``normalization: model`` resolved for its model, then the limits."""
    size, name = input_cfg["size"], input_cfg["normalization"]
    if size == MODEL_NATIVE:
        size = _native_input(run.model, options)[0]
    if config["limits"]["input_size"] and size:
        size = config["limits"]["input_size"]
    if name == AUTO_NORMALIZATION:
        mean = std = []  # the train split's, recorded when the dataset is prepared: the job reads them there
    elif name == MODEL_NATIVE:
        _, mean, std = _native_input(run.model, options)
        if not mean:
            raise ConfigError(f"config error at '{where}.input.normalization': 'model' asks for the normalisation "
                              f"of {run.model}'s pretrained weights, but it has none; name one (unit, a dataset, "
                              "auto, or one defined under 'normalization')")
    else:
        mean, std = normalizations(config)[name]["mean"], normalizations(config)[name]["std"]
    return {"size": size, "rgb": input_cfg["rgb"], "normalization": name, "mean": list(mean), "std": list(std)}


@dataclass(frozen=True)
class ModelProbe:
    """What building a model on the ``meta`` device (no memory, no weights) and passing it one batch tells."""

    build_error: str | None = None
    modules: tuple[str, ...] = ()  # every module's dotted name
    children: tuple[str, ...] = ()  # the top-level modules
    parameters: tuple[str, ...] = ()  # every parameter's dotted name
    forward_error: str | None = None
    output_shape: tuple[int, ...] | None = None  # of a batch of two images (None: the meta device could not tell)


@functools.lru_cache(maxsize=256)
def _probe_model(builder: Any, name: str, num_classes: int, in_channels: int, input_size: int | None,
                 image_size: int, options: str) -> ModelProbe:
    """Build ``name`` as a run would (``builder`` only keys the cache, so a re-registered name is built again)
    on the meta device and run a batch of two ``image_size`` images through it in eval mode: shapes only,
    milliseconds even for VGG19 or ResNet50."""
    try:
        model = models.build_on_meta(name, num_classes, in_channels, input_size, json.loads(options))
    except Exception as error:  # noqa: BLE001 - a model file's builder can fail in any way; the job would too
        return ModelProbe(build_error=f"{type(error).__name__}: {error}")
    shape, error = _forward(model, in_channels, image_size)
    return ModelProbe(None, tuple(n for n, _ in model.named_modules()), tuple(n for n, _ in model.named_children()),
                      tuple(n for n, _ in model.named_parameters()), error, shape)


def _forward(model: torch.nn.Module, in_channels: int, image_size: int) -> tuple[tuple | None, str | None]:
    """(output shape, None) of a batch of two images, or (None, why it fails); (None, None) when the meta device
    cannot tell (an op without a meta kernel, or code that reads values; the training job will)."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shapes only: a warning about values says nothing here
            out = model.eval()(models.blank_batch(model, 2, in_channels, image_size))
        return (tuple(out.shape) if isinstance(out, torch.Tensor) else None), None
    except NotImplementedError:
        return None, None
    except Exception as error:  # noqa: BLE001 - whatever fails here fails the training job too
        return None, (None if "meta" in str(error) else f"{type(error).__name__}: {error}")


def _check_model(config: dict, run: Run, study: dict, settings: dict, where: str) -> None:
    """What would otherwise fail inside the training job: pretraining a model that has no weights, channels or a
    normalisation the model cannot take, images it cannot take, an output that is not one logit per class, a
    freeze level naming modules it does not have. The model is built on the meta device (once per distinct
    build), never with real memory or weights."""
    spec = models.get_spec(run.model)
    model_field = f"{where}.models[{study['models'].index(run.model)}]"
    _check_weights_and_channels(run, spec, settings, where, model_field)
    size = settings["input"]["size"]
    image = size or dataset_info(config, run.dataset).size
    channels = settings["in_channels"]
    probe = _probe_model(spec.builder, run.model, settings["num_classes"], channels, size, image,
                         json.dumps(settings["model_options"], sort_keys=True))
    if probe.build_error:
        raise ConfigError(f"config error at '{model_field}': model '{run.model}' cannot be built for run {run.id} "
                          f"({settings['num_classes']} classes, {channels} channels, input size {size}): "
                          f"{probe.build_error}")
    if probe.forward_error:
        capped = config["limits"]["input_size"] if size and size == config["limits"]["input_size"] else None
        given = (f"input.size {size}" + (" (limits.input_size)" if capped else "") if size
                 else f"{run.dataset}'s own {image} px (input.size null)")
        raise ConfigError(f"config error at '{where}.input.size': model '{run.model}' cannot take the images run "
                          f"{run.id} feeds it, {channels}x{image}x{image} ({given}): "
                          f"{probe.forward_error.rstrip('.')}. Its "
                          f"native input is {spec.channels}x{spec.input_size}x{spec.input_size}; set input.size to a "
                          "size the model takes")
    if probe.output_shape is not None and probe.output_shape != (2, settings["num_classes"]):
        raise ConfigError(f"config error at '{model_field}': model '{run.model}' "
                          f"({models.user_files.owner(spec.builder.__module__)}) gives "
                          f"output of shape {list(probe.output_shape)} for a batch of 2 images of run {run.id}, "
                          f"expected [2, {settings['num_classes']}]: one logit per class of {run.dataset}. Its "
                          "builder must size its head by num_classes, its first argument")
    if settings["trainable"] != "all":
        _check_freeze(run, study, spec, settings["trainable"], probe, where)


def _check_weights_and_channels(run: Run, spec: Any, settings: dict, where: str, model_field: str) -> None:
    """Pretraining needs weights and the images they were made for: their channels (and, for a model whose
    position embedding the weights fix, their size); a normalisation has one value per channel (or one for all)."""
    if settings["pretrained"] and spec.pretrained_weights is None:
        with_weights = [m for m in models.model_names() if models.get_spec(m).pretrained_weights]
        raise ConfigError(f"config error at '{where}.pretrained': study {run.study} sets pretrained: true, but model "
                          f"'{run.model}' ('{model_field}') has no pretrained weights: it trains from scratch. Models "
                          f"with ImageNet weights: {', '.join(with_weights)}, and any torchvision.<name> of "
                          f"torchvision's zoo. Set pretrained: false, or train {run.model} in a study of its own")
    channels, norm = settings["in_channels"], settings["input"]
    if spec.pretrained_weights is not None and channels != spec.channels:
        raise ConfigError(f"config error at '{where}.input.rgb': model '{run.model}' takes {spec.channels}-channel "
                          f"images, but {run.dataset} has {channels}-channel images and input.rgb is false; "
                          "valid value here: true (grey images are repeated to RGB)")
    if settings["pretrained"] and zoo.is_zoo_name(run.model):
        member = models.weights_member(run.model, settings["model_options"])
        fixed = zoo.fixed_input_size(run.model, member)
        if fixed and norm["size"] != fixed:
            raise ConfigError(f"config error at '{where}.input.size': the weights of '{run.model}' ({member}) take "
                              f"{fixed} px images (its position embedding is sized for them), but run {run.id} feeds "
                              f"{norm['size'] or 'its dataset size in'} px; set input.size: model (or {fixed}), or "
                              "pretrained: false")
    for key in ("mean", "std"):
        if len(norm[key]) not in (0, 1, channels):
            raise ConfigError(f"config error at '{where}.input.normalization': normalization '{norm['normalization']}' "
                              f"has {len(norm[key])} {key} values ({norm[key]}), but run {run.id} feeds "
                              f"{channels}-channel images ({run.dataset}, input.rgb {str(norm['rgb']).lower()}); "
                              f"expected {'1 value' if channels == 1 else f'1 or {channels} values'} per statistic")


def _check_freeze(run: Run, study: dict, spec: Any, trainable: list, probe: ModelProbe, where: str) -> None:
    """Every module prefix of the run's freeze level names a module of its model, and one of them holds a
    parameter."""
    level, field = run.freeze, f"freeze_levels.{run.freeze}"
    used = f"used by study {run.study} ('{where}.freeze[{study['freeze'].index(level)}]') for model {run.model}"
    top = ", ".join(probe.children)
    modules = set(probe.modules) - {""}
    inner = next((name for name in probe.modules if "." in name), None)
    inside = f"a dotted name reaches inside one, e.g. {inner}; " if inner else ""
    resolved = []
    for j, prefix in enumerate(trainable):
        module = spec.head if prefix == "head" else prefix
        if module not in modules:
            raise ConfigError(f"config error at '{field}[{j}]': freeze level '{level}' ({used}) names module prefix "
                              f"'{prefix}', which matches no module of {run.model}; its top-level modules: {top} "
                              f"({inside}'head' stands for its classifier, {spec.head})")
        resolved.append(module)
    if not any(param.startswith(module + ".") for param in probe.parameters for module in resolved):
        raise ConfigError(f"config error at '{field}': freeze level '{level}' ({used}) trains modules "
                          f"{', '.join(resolved)}, which hold no parameter of {run.model}: nothing would train; its "
                          f"top-level modules: {top}")


def settings_by_run(config: dict, probe_models: bool = True) -> dict[str, dict]:
    """Every run's settings by run id, each recipe checked once: what the workflow looks jobs up in."""
    return {run.id: run_settings(config, run, probe_models) for run in expand_runs(config)}


def data_settings(config: dict, dataset: str) -> dict:
    """Source and sizes for one dataset: the global data settings with its per-dataset overrides; for a declared
    dataset also its facts (what its prepare job reads and checks)."""
    data = config["data"]
    override = copy.deepcopy(data["datasets"].get(dataset, {}))
    # A dataset without an override still gets the defaults of the keys only an override sets (npz, ...).
    schema = config_schema()
    _check_against(override, _fragment(schema, schema["properties"]["data"]["properties"]["datasets"][
        "additionalProperties"]), f"data.datasets.{dataset}")
    settings = {**{k: v for k, v in data.items() if k != "datasets"}, **override}
    if dataset not in DATASETS and dataset in data["datasets"]:
        facts = declared_facts(config, dataset)
        settings["facts"] = {**facts.record(), "size": store_size(config, dataset, facts)}
    return settings
