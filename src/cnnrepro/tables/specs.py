"""A study's paper tables checked against their CSVs before any job runs (and again before aggregation reads its
inputs, in case a CSV was edited since): every column, run field, metric, note and layout entry a table names
exists, and every printed number reads as one. Each problem is a ValueError starting with the config field and
naming the file, line or column; :func:`check_config`, the start-up check, gives it as a ConfigError."""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro import models
from cnnrepro.tables.layout import EXTRA_COLUMNS, METRIC_DIM, layout_dims, place_notes, shown_metrics, split_columns
from cnnrepro.tables.summary import RUN_FIELDS, metric_field_problem


def _read_paper_csv(path: Path, field: str) -> pd.DataFrame:
    """A paper CSV as text cells; a file pandas would read differently from what it shows (a repeated column
    name, a row with more or fewer cells than the header) is an error naming the file and the line."""
    where = f"at '{field}.file': {path}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            lines = [(number, cells) for number, cells in enumerate(csv.reader(handle), 1) if cells]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{where} cannot be read as CSV ({type(error).__name__}: {error})") from None
    if not lines:
        raise ValueError(f"{where} is empty; expected a header line and one line per printed row")
    header = lines[0][1]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated or "" in header:
        what = f"repeats column '{repeated[0]}'" if repeated else "has a column without a name"
        raise ValueError(f"{where} {what} in its header ({', '.join(header)}); expected distinct column names")
    for number, cells in lines[1:]:
        if len(cells) != len(header):
            raise ValueError(f"{where}, line {number}: {len(cells)} cells ({','.join(cells)}), expected "
                             f"{len(header)}, one per column ({', '.join(header)})")
    if len(lines) == 1:
        raise ValueError(f"{where} has a header but no rows; expected one line per printed row")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _selector_fields(config: dict, study: str) -> tuple[list[str], dict[str, list[str]]]:
    """(fields, {prefix: keys}): the run fields a paper row can select by (cnnrepro.tables.select.run_value)."""
    schema = cfg.config_schema()  # not changed here: no copy needed
    spec = config["studies"][study]
    study_schema = schema["properties"]["studies"]["additionalProperties"]["properties"]
    return ([*RUN_FIELDS[1:], "augment", *spec["grid"]],
            {"recipe": list(schema["definitions"]["recipe"]["properties"]),
             "input": [*study_schema["input"]["properties"], "mean", "std"]})


def _check_selector(config: dict, study: str, selector: dict, field: str) -> None:
    """A paper row selects runs by fields they have (a misspelt one would select no run) and by names that exist."""
    fields, prefixed = _selector_fields(config, study)
    # The registered models and every model a study names (a zoo or model-file model is registered in the process
    # that checked the config at start-up, not necessarily in the aggregation job that checks the table again).
    named = (model for spec in config["studies"].values() for model in spec["models"])
    known = {"dataset": cfg.dataset_names(config), "model": tuple(dict.fromkeys([*models.model_names(), *named])),
             "freeze": tuple(config["freeze_levels"])}
    for key, value in selector.items():
        prefix, _, rest = key.partition(".")
        if key not in fields and not (rest and rest in prefixed.get(prefix, ())):
            valid = ", ".join([*fields, *(f"{p}.<key> with <key> one of {', '.join(keys)}"
                                          for p, keys in prefixed.items())])
            raise ValueError(f"at '{field}': '{key}' is not a run field (misspelt?); a paper row selects runs by: "
                             f"{valid}")
        if key in known and value is not None and value not in known[key]:
            raise ValueError(f"at '{field}': unknown {key} {value!r}; valid values: {', '.join(known[key])}")


def _shared_columns(config: dict, study: str, table: dict) -> set[str]:
    """The columns of every CSV of ``study`` whose table has the same ``metrics`` map as ``table``."""
    columns: set[str] = set()
    for other in config["studies"][study]["tables"]:
        if other["metrics"] == table["metrics"]:
            path = cfg.paper_table_path(config, other)
            if path.is_file():
                columns.update(pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0).columns)
    return columns


@dataclass(frozen=True)
class _PaperCsv:
    """A configured table's CSV as the checks read it."""

    field: str  # the table entry's config path
    path: Path
    columns: list[str]
    records: list[dict]
    metric_cols: list[str]
    key_cols: list[str]

    @property
    def listed(self) -> str:
        return ", ".join(self.columns)

    def describe(self, i: int) -> str:
        """Row ``i`` as a reader finds it in the file: its line and key cells."""
        keys = ", ".join(f"{c}={self.records[i][c]}" for c in self.key_cols)
        return f"line {i + 2} ({keys})" if keys else f"line {i + 2}"


def check_paper_table(config: dict, study: str, index: int) -> None:
    """One configured paper table against its CSV; a ValueError starting ``at '<field>':`` otherwise.

    - ``match`` keys are columns of the CSV; ``where`` and the run fields ``match`` selects are run fields;
    - ``metrics``: at least one key is a column of the CSV, and each key is a column of it or, for a map shared
      by several tables of the study (seed 002: an identical map on tables printing different columns), of
      one of those tables' CSVs; each value is a number every run's summary holds (``METRIC_FIELDS``, or
      ``test_f1_by_class.<class>``, ``{column}`` templates filled from each row);
    - rows: no two rows with the same key cells (every column not under metrics); a metric cell is a number
      as printed, or empty (the paper's "-");
    - notes name columns the CSV has and select rows (:func:`place_notes`).
    """
    table = config["studies"][study]["tables"][index]
    field = f"studies.{study}.tables[{index}]"
    path = cfg.paper_table_path(config, table)
    paper = _read_paper_csv(path, field)
    columns = list(paper.columns)
    metric_cols, key_cols = split_columns(table, columns)
    csv_file = _PaperCsv(field, path, columns, paper.to_dict("records"), metric_cols, key_cols)
    _check_columns(config, study, table, csv_file)
    _check_metric_fields(config, study, table, csv_file)
    _check_rows(csv_file)
    place_notes(table, f"{path.name} (study {study})", key_cols, metric_cols, csv_file.records, field=field)
    check_layout(table, field, path, key_cols, metric_cols, csv_file.records)


def _check_columns(config: dict, study: str, table: dict, csv_file: _PaperCsv) -> None:
    """The columns the table entry names exist, and the run fields it selects by are run fields."""
    field, path, columns, listed = csv_file.field, csv_file.path, csv_file.columns, csv_file.listed
    clash = [c for c in EXTRA_COLUMNS if c in columns]
    if clash:
        raise ValueError(f"at '{field}.file': {path} has a column '{clash[0]}', a name the output uses for its own "
                         "column; rename it in the CSV")
    for column, rule in (table.get("match") or {}).items():
        if column not in columns:
            raise ValueError(f"at '{field}.match.{column}': '{column}' is not a column of {path}; its columns: "
                             f"{listed}")
        if isinstance(rule, str):
            _check_selector(config, study, {rule: None}, f"{field}.match.{column}")
        else:
            for printed, selector in rule.items():
                _check_selector(config, study, selector, f"{field}.match.{column}.{printed}")
    _check_selector(config, study, table.get("where") or {}, f"{field}.where")
    if not csv_file.metric_cols:
        raise ValueError(f"at '{field}.metrics': none of {', '.join(table['metrics']) or 'its keys'} is a column of "
                         f"{path}; its columns: {listed}")
    shared = None
    for metric in table["metrics"]:
        if metric not in columns:
            shared = _shared_columns(config, study, table) if shared is None else shared
            if metric not in shared:
                raise ValueError(
                    f"at '{field}.metrics.{metric}': '{metric}' is not a column of {path} (its columns: {listed}) "
                    "nor of any other CSV of the study whose table shares this metrics map; a metrics key is a "
                    "column of the table's CSV (a map shared by several tables may name a column only some print)")


def _check_metric_fields(config: dict, study: str, table: dict, csv_file: _PaperCsv) -> None:
    """Each metric column maps to a number every run's summary holds, its ``{column}`` templates filled from
    every row."""
    field, path = csv_file.field, csv_file.path
    # Not dataset_info: the aggregation job, which checks the table again, has not imported the model files.
    num_classes = max(cfg.dataset_classes(config, d) for d in config["studies"][study]["datasets"])
    for metric in csv_file.metric_cols:
        source = table["metrics"][metric]
        if source is None:
            continue
        placeholders = [name for _, name, _, _ in string.Formatter().parse(source) if name is not None]
        for name in placeholders:
            if name not in csv_file.columns:
                raise ValueError(f"at '{field}.metrics.{metric}': {{{name}}} in '{source}' is not a column of "
                                 f"{path}; its columns: {csv_file.listed}")
        for i, record in enumerate(csv_file.records if placeholders else csv_file.records[:1]):
            problem = metric_field_problem(source.format(**record), num_classes)
            if problem:
                row = f"'{source}' for {csv_file.describe(i)} of {path}: " if placeholders else ""
                raise ValueError(f"at '{field}.metrics.{metric}': {row}{problem}")


def _check_rows(csv_file: _PaperCsv) -> None:
    """One row per printed observation, and every metric cell a number as printed (or empty: the paper's "-")."""
    field, path, describe = csv_file.field, csv_file.path, csv_file.describe
    seen: dict[tuple, int] = {}
    for i, record in enumerate(csv_file.records):
        key = tuple(record[c] for c in csv_file.key_cols)
        if key in seen:
            raise ValueError(f"at '{field}.file': {path}, {describe(i)} repeats {describe(seen[key])}: every key "
                             f"column ({', '.join(csv_file.key_cols)}) has the same value; expected one row per "
                             "printed observation")
        seen[key] = i
        for metric in csv_file.metric_cols:
            cell = record[metric].strip()
            if cell:
                try:
                    float(cell)
                except ValueError:
                    raise ValueError(f"at '{field}.file': {path}, {describe(i)}, column '{metric}': "
                                     f"{record[metric]!r} is not a number; a metric cell holds the printed digits "
                                     "(decimal point, no thousands separator or unit), or is empty where the paper "
                                     "prints '-'") from None


def check_config(config: dict) -> None:
    """The start-up check of every study's paper tables (cnnrepro.startup): each CSV exists, no two share the
    output file name, and each matches its table entry (:func:`check_paper_table`); a ConfigError otherwise."""
    tables_dir = Path(config["paper_tables_dir"])
    table_names: dict[str, str] = {}  # output file name -> the field that claimed it first
    for name, study in config["studies"].items():
        for i, table in enumerate(study["tables"]):
            path, field = cfg.paper_table_path(config, table), f"studies.{name}.tables[{i}].file"
            if not path.is_file():
                raise cfg.ConfigError(f"config error at '{field}': {path} does not exist; a bare file name is "
                                      f"looked up in '{tables_dir}/', a path with a '/' is used as given")
            # Each table is written to tables/<file name>, so two with one name would overwrite each other.
            if path.name in table_names:
                raise cfg.ConfigError(f"config error at '{field}': '{table['file']}' has the same file name as "
                                      f"{table_names[path.name]}; both would be written to tables/{path.name}. "
                                      "Rename one of the CSVs.")
            table_names[path.name] = f"'{field}' ({path})"
    try:
        check_paper_tables(config)
    except ValueError as error:
        text = str(error)
        raise cfg.ConfigError(f"config error {text}" if text.startswith("at '") else f"config error: {text}") \
            from None
    for name, study in config["studies"].items():
        _check_headline(config, name, study)


def _check_headline(config: dict, name: str, study: dict) -> None:
    """The headline metric the study's assumptions are compared by is a metric column of one of its tables."""
    if study["headline"] is None:
        return
    columns = [m for table in study["tables"] for m in split_columns(
        table, list(pd.read_csv(cfg.paper_table_path(config, table), nrows=0).columns))[0]]
    if study["headline"] not in columns:
        raise cfg.ConfigError(f"config error at 'studies.{name}.headline': '{study['headline']}' is not a metric "
                              f"column of the study's paper tables; their metric columns: "
                              f"{', '.join(dict.fromkeys(columns)) or 'none (no table)'}")


def check_paper_tables(config: dict) -> None:
    """Every configured paper table against its CSV (:func:`check_paper_table`): at the config check, before any
    job runs, and again before aggregation reads its inputs."""
    for study, spec in config["studies"].items():
        for index in range(len(spec["tables"])):
            check_paper_table(config, study, index)


def check_layout(table: dict, field: str, path: Path, key_cols: list[str], metric_cols: list[str],
                 records: list[dict]) -> None:
    """The table's layout names its columns and puts every number in a cell of its own (a ValueError starting
    ``at '<field>...':`` otherwise)."""
    layout = table.get("layout") or {}
    mapped = list(table["metrics"])
    rows, columns = layout_dims(table, key_cols, records)
    if METRIC_DIM in key_cols:
        raise ValueError(f"at '{field}.file': {path} has a key column named '{METRIC_DIM}', the name the layout "
                         "uses for the metric columns; rename it in the CSV")
    for where, dims in (("rows", rows), ("columns", columns)):
        for j, dim in enumerate(dims):
            if dim != METRIC_DIM and dim not in key_cols:
                raise ValueError(f"at '{field}.layout.{where}[{j}]': '{dim}' is neither '{METRIC_DIM}' nor a key "
                                 f"column of {path}; its key columns: {', '.join(key_cols) or 'none'}")
    both = [d for d in rows if d in columns]
    if both:
        raise ValueError(f"at '{field}.layout': '{both[0]}' is in both rows and columns; a dimension goes in one")
    shown = shown_metrics(table, metric_cols)
    if METRIC_DIM not in (*rows, *columns) and len(shown) > 1:
        raise ValueError(f"at '{field}.layout': the table prints {len(shown)} metrics ({', '.join(shown)}) but "
                         f"neither rows nor columns has '{METRIC_DIM}'; add it to one of them")
    listed = [d for d in (*rows, *columns) if d != METRIC_DIM]
    seen: dict[tuple, int] = {}
    for i, record in enumerate(records):
        key = tuple(record[c] for c in listed)
        if key in seen:
            cells = ", ".join(f"{c}={record[c]}" for c in listed) or "no key column"
            raise ValueError(f"at '{field}.layout': lines {seen[key] + 2} and {i + 2} of {path} fall in the same cell "
                             f"({cells}); add the key column that tells them apart to rows or columns")
        seen[key] = i
    for name in ("units", "decimals", "plus_minus"):
        for metric in layout.get(name) or {}:
            if metric not in mapped:
                raise ValueError(f"at '{field}.layout.{name}.{metric}': '{metric}' is not a metric column of the "
                                 f"table (under metrics); its metric columns: {', '.join(mapped)}")
    for mean, spread in (layout.get("plus_minus") or {}).items():
        if mean in metric_cols and spread not in metric_cols:
            raise ValueError(f"at '{field}.layout.plus_minus.{mean}': '{spread}' is not a metric column of {path}; "
                             f"its metric columns: {', '.join(metric_cols)}")
    for name in ("kinds", "not_comparable"):
        for metric in table.get(name) or {}:
            if metric not in mapped:
                raise ValueError(f"at '{field}.{name}.{metric}': '{metric}' is not a metric column of the table "
                                 f"(under metrics); its metric columns: {', '.join(mapped)}")
