"""Aggregation: each run's metrics and benchmarks as one flat summary, and every paper table
rebuilt with ``<metric>_paper`` beside ``<metric>_ours``.

How a paper row finds its runs is data in config (``studies.<name>.tables``): ``match`` maps a
paper key column to run fields, ``where`` adds fixed run fields, ``metrics`` maps each paper
metric column to a summary field (``{column}`` templates take the row's cell), and ``notes`` label
deviations from the paper on the whole table, a metric column, a row or one cell.

Every file comes in as a path the workflow rule names (workflow/rules/); nothing here derives a path.
Each metrics and benchmark file is identified by what it says it is, and a configured run or benchmark
without its file, or a file the config does not define, is an error rather than an empty cell, except in
a partial aggregation (``partial=True``, after a workflow that ended with failed jobs): there a run without
its metrics is ``failed`` when its job left a log and ``not run`` otherwise, and its cells say so.

Each study is aggregated on its own (:func:`aggregate_study`), so one study's tables never wait for another's
runs. Our number in a cell is the mean over the runs the row selects (seeds are a grid axis), with their
standard deviation, count and 95 % interval, and a verdict against the paper's (cnnrepro.verdicts).
"""

from __future__ import annotations

import logging
import math
import statistics
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro import io
from cnnrepro import verdicts as vd

log = logging.getLogger("cnnrepro.aggregate")

RUN_FIELDS = ("study", "dataset", "model", "freeze", "variant", "seed")
BENCH_FIELDS = ("study", "dataset", "model", "freeze")
BENCH_KINDS = ("cpu", "gpu")
# What a paper table's output adds after its key and metric columns.
EXTRA_COLUMNS = ("runs_ours", "status_ours", "device_ours", "deviations_ours", "notes")
# Per metric column m: m_paper (as printed), then our mean, std, count and 95 % interval, the verdict and its reason.
METRIC_SUFFIXES = ("_paper", "_ours", "_ours_std", "_ours_n", "_ours_ci95_low", "_ours_ci95_high", "_verdict",
                   "_reason")
# A run's status: its record says ok or diverged; without a record its job failed (it left a log) or never ran.
STATUSES = ("ok", "diverged", "failed", "not run")
# Summary fields measured by the model's benchmark on the CPU (size and FLOPs too) and on the GPU.
CPU_BENCH_FIELDS = ("size_MiB", "size_MB_1024000", "size_MB_paper_unit", "state_dict_MiB", "flops_forward",
                    "cpu_time_ms_mean", "cpu_time_ms_std", "cpu_latency_median_ms")
GPU_BENCH_FIELDS = ("gpu_time_ms_mean", "gpu_time_ms_std", "gpu_latency_median_ms")
PathLike = str | Path
# Every number summarize writes: what a paper table's ``metrics`` may name (the run's identity, settings and
# device names are in the summary too, but they select runs or label them; they are not compared).
METRIC_FIELDS = (
    "test_top1_pct", "test_acc", "test_top5_pct", "test_loss", "macro_f1", "eval_loss", "eval_acc",
    "train_loss_first", "train_loss_last", "train_acc_last", "train_acc_last_pct", "train_seconds", "epochs_run",
    "selected_epoch", "params_count", "params_trainable", "peak_memory_bytes",
    # from the model's benchmarks (studies with benchmark: true)
    "size_MiB", "size_MB_1024000", "size_MB_paper_unit", "state_dict_MiB", "flops_forward", "cpu_time_ms_mean",
    "cpu_time_ms_std", "cpu_latency_median_ms", "gpu_time_ms_mean", "gpu_time_ms_std", "gpu_latency_median_ms",
)
# Summary fields that are maps: <field>.<key>, with what the key may be.
METRIC_MAPS = {"test_f1_by_class": "a class index 0 .. classes-1, or 'macro avg'"}


def metric_field_problem(dotted: str, num_classes: int | None = None) -> str | None:
    """Why ``dotted`` is not a number :func:`summarize` writes (None when it is one). ``num_classes`` bounds
    the class index of ``test_f1_by_class.<class>``."""
    base, _, key = dotted.partition(".")
    accepted = ", ".join([*METRIC_FIELDS, *(f"{name}.<key> ({what})" for name, what in METRIC_MAPS.items())])
    if not key and dotted in METRIC_FIELDS:
        return None
    if key and base == "test_f1_by_class":
        if key == "macro avg" or (key.isdigit() and (num_classes is None or int(key) < num_classes)):
            return None
        bound = f"0 .. {num_classes - 1}" if num_classes else "a class index"
        return f"'{key}' is not a class of test_f1_by_class: expected {bound} or 'macro avg'"
    return f"'{dotted}' is not a field any run's summary holds; accepted: {accepted}"


def summarize(record: dict, bench_cpu: dict | None = None, bench_gpu: dict | None = None) -> dict:
    """One flat dict per run: the fields paper tables and the report read."""
    settings = record["settings"]
    out: dict[str, Any] = {k: settings[k] for k in RUN_FIELDS}
    out.update(status=record.get("status"), augment=settings.get("augment"), recipe=settings.get("recipe", {}),
               grid=settings.get("grid", {}),
               input=settings.get("input", {}), epochs_run=record.get("epochs_run"),
               train_seconds=record.get("train_seconds"), device_name=record.get("device_name"),
               # The speed switches in effect that compute differently from the papers' fp32 training;
               # records from before they were recorded (or without them) count as faithful.
               deviations=list((record.get("speed") or {}).get("deviations") or []),
               # Provenance of the run, for the report's run list.
               run_id=record.get("run_id") or settings.get("run_id"), device=record.get("device"),
               precision=((record.get("speed") or {}).get("numerics") or {}).get("precision"),
               torch_version=record.get("torch_version"), python_version=record.get("python_version"),
               threads=record.get("threads"), host=record.get("host"))
    if record.get("status") == "ok":
        test = record["test"]
        out.update(
            test_top1_pct=100 * test["top1"], test_acc=test["top1"], test_loss=test["loss"],
            test_top5_pct=100 * test["top5"] if "top5" in test else None,
            macro_f1=test["macro_f1"],
            test_f1_by_class={**{str(i): f for i, f in enumerate(test["f1_per_class"])},
                              "macro avg": test["macro_f1"]},
            eval_loss=record["eval"]["loss"], eval_acc=record["eval"]["acc"],
            train_loss_first=record["train_loss_first"], train_loss_last=record["train_loss_last"],
            train_acc_last=record["train_acc_last"], train_acc_last_pct=100 * record["train_acc_last"],
            params_count=record["params_total"], params_trainable=record["params_trainable"],
            selected_epoch=record.get("selected_epoch"), peak_memory_bytes=record.get("peak_memory_bytes"),
        )
    if bench_cpu and bench_cpu.get("measured"):
        size = bench_cpu["size"]
        unit = settings["size_unit"]
        out.update(
            size_MiB=size["checkpoint_MiB"], size_MB_1024000=size["checkpoint_MB_1024000"],
            size_MB_paper_unit=size["checkpoint_MiB"] if unit == "MiB" else size["checkpoint_MB_1024000"],
            state_dict_MiB=size["state_dict_MiB"], flops_forward=bench_cpu["flops"]["flops_forward"],
            cpu_time_ms_mean=bench_cpu["latency_paper"]["mean_ms"],
            cpu_time_ms_std=bench_cpu["latency_paper"]["std_ms"],
            cpu_latency_median_ms=bench_cpu["latency_correct"]["median_ms"],
            cpu_device=bench_cpu["device"]["device_name"],
        )
    if bench_gpu:
        if bench_gpu.get("measured"):
            out.update(gpu_time_ms_mean=bench_gpu["latency_paper"]["mean_ms"],
                       gpu_time_ms_std=bench_gpu["latency_paper"]["std_ms"],
                       gpu_latency_median_ms=bench_gpu["latency_correct"]["median_ms"],
                       gpu_device=bench_gpu["device"]["device_name"])
        else:
            out["gpu_not_measured"] = bench_gpu.get("reason")
    return out


def benchmarks(config: dict) -> list[tuple[str, ...]]:
    """(study, dataset, model, freeze, kind) of every configured benchmark: one per model of each study
    with ``benchmark`` on, on the CPU and on the GPU (as the benchmark rules produce them)."""
    return [(*key, kind) for key in cfg.benchmarked_runs(config) for kind in BENCH_KINDS]


def metrics_identity(record: dict) -> str:
    return record["run_id"]


def bench_identity(record: dict) -> tuple[str, ...]:
    # benchmark_job adds the run fields to what bench writes; bench itself records the device kind.
    return (*(record[k] for k in BENCH_FIELDS), record["device_kind"])


def _describe(key: Hashable) -> str:
    if isinstance(key, tuple):  # a benchmark
        return f"benchmark {'/'.join(key[:-1])} ({key[-1]})"
    return f"run {key}"


def _by_identity(paths: Iterable[PathLike], identify: Callable[[dict], Hashable], what: str) -> dict:
    """identity -> (path, record) for each file, by what the file says it is; two alike is an error."""
    found: dict = {}
    for path in paths:
        record = io.read_json(path)
        key = identify(record)
        if key in found:
            raise ValueError(f"{path} and {found[key][0]} are both the {what} of {_describe(key)}; "
                             "expected one file each")
        found[key] = (Path(path), record)
    return found


def _check_complete(found: dict, expected: Iterable[Hashable], what: str, of: str) -> None:
    """The inputs hold exactly what the config defines: none missing (the rule's inputs guarantee
    presence, so a gap is a wiring error, not a run still to come) and none extra."""
    expected = list(expected)
    known = set(expected)
    for key, (path, _) in found.items():
        if key not in known:
            raise ValueError(f"{path} holds the {what} of {_describe(key)}, which the config does not define; "
                             f"expected only the {what} of configured {of}s")
    missing = [key for key in expected if key not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"no {what} file among the inputs for {_describe(missing[0])}{more}; expected one "
                         f"{what} file per configured {of}")


def _when(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def missing_status(log_path: PathLike | None) -> str:
    """What a configured run without a metrics record is: ``failed`` when its job ran (it left a non-empty log;
    Snakemake removes the outputs of a failed job) and ``not run`` otherwise."""
    if log_path is not None and Path(log_path).is_file() and Path(log_path).stat().st_size > 0:
        return "failed"
    return "not run"


def load_summaries(config: dict, metrics: Iterable[PathLike], bench: Iterable[PathLike],
                   studies: Iterable[str] | None = None, logs: Mapping[str, PathLike] | None = None,
                   partial: bool = False) -> list[dict]:
    """One summary per configured run of ``studies`` (all when None), in config order, from exactly the given
    files. ``logs`` maps run ids to their training logs (linked from the report). ``partial``: a run without its
    metrics file gets a summary without numbers whose status says why (:func:`missing_status`), a benchmark
    without its record leaves its fields empty with the reason ``benchmark not run``."""
    studies = list(config["studies"]) if studies is None else list(studies)
    runs = cfg.expand_runs(config, studies)
    logs = dict(logs or {})
    records = _by_identity(metrics, metrics_identity, "metrics")
    benches = _by_identity(bench, bench_identity, "benchmark")
    expected_bench = [key for key in benchmarks(config) if key[0] in studies]
    if partial:  # files of runs the config does not define are still an error; missing ones are not
        known = {run.id for run in runs}
        _check_complete(records, [k for k in records if k in known], "metrics", "run")
        _check_complete(benches, [k for k in expected_bench if k in benches], "benchmark", "benchmark")
    else:
        _check_complete(records, (run.id for run in runs), "metrics", "run")
        _check_complete(benches, expected_bench, "benchmark", "benchmark")
    benchmarked = cfg.benchmarked_runs(config)
    summaries = []
    for run in runs:
        key = (run.study, run.dataset, run.model, run.freeze)
        # A benchmark measures the weights of one run (the first variant and seed): its numbers are that run's,
        # not repeated over seeds they were not measured on.
        measured_here = key in benchmarked and benchmarked[key].id == run.id
        cpu, gpu = (benches[(*key, kind)][1] if measured_here and (*key, kind) in benches else None
                    for kind in BENCH_KINDS)
        if run.id in records:
            path, record = records[run.id]
            summary = summarize(record, cpu, gpu)
            finished = path.stat().st_mtime
            summary["finished_at"] = _when(finished)
            if record.get("train_seconds") is not None:
                summary["started_at"] = _when(finished - float(record["train_seconds"]))
        else:
            summary = summarize({"status": missing_status(logs.get(run.id)), "run_id": run.id,
                                 "settings": cfg.run_settings(config, run)}, cpu, gpu)
        for kind, record in (("cpu", cpu), ("gpu", gpu)):
            if record is None and measured_here and f"{kind}_not_measured" not in summary:
                summary[f"{kind}_not_measured"] = "benchmark not run"
        summary["log"] = str(logs[run.id]) if run.id in logs else None
        summaries.append(summary)
    return summaries


def _same(run_value: Any, wanted: Any) -> bool:
    if run_value is None:
        return False
    try:
        return float(run_value) == float(wanted)
    except (TypeError, ValueError):
        return str(run_value) == str(wanted)


def row_selector(table: dict, row: dict) -> dict[str, Any] | None:
    """Run fields the paper row selects; None when a printed value has no mapping."""
    selector = dict(table.get("where", {}))
    for column, rule in (table.get("match") or {}).items():
        cell = row[column]
        if isinstance(rule, str):
            selector[rule] = cell
        elif cell in rule:
            selector.update(rule[cell])
        else:
            return None
    return selector


def run_field(summary: dict, dotted: str) -> Any:
    """A run's value for a selector field: its configured grid value first (limits may cap what ran)."""
    grid = summary.get("grid") or {}
    return grid[dotted] if dotted in grid else cfg.get_path(summary, dotted)


def matching(summaries: list[dict], study: str, selector: dict[str, Any]) -> list[dict]:
    return [s for s in summaries if s["study"] == study
            and all(_same(run_field(s, k), v) for k, v in selector.items())]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else None


def _round(value: float | None) -> Any:
    if value is None:
        return None
    return int(value) if float(value).is_integer() and abs(value) >= 1 else round(float(value), 4)


@dataclass
class Notes:
    """Where a table's notes go. Note ``n`` is ``texts[n - 1]``; each list holds note numbers."""

    texts: list[str] = field(default_factory=list)
    table: list[int] = field(default_factory=list)  # on the whole table
    rows: list[list[int]] = field(default_factory=list)  # per row: on the row
    cells: list[dict[str, list[int]]] = field(default_factory=list)  # per row: metric column -> on that cell

    def of_row(self, i: int) -> list[int]:
        """Every note that applies to row ``i`` or one of its cells."""
        return sorted({*self.table, *self.rows[i], *(n for numbers in self.cells[i].values() for n in numbers)})

    def describe(self, i: int) -> str:
        """Row ``i``'s notes as the output CSV holds them: ``[1] text; [2] text``."""
        return "; ".join(f"[{n}] {self.texts[n - 1]}" for n in self.of_row(i))


def _add(numbers: list[int], number: int) -> None:
    if number not in numbers:
        numbers.append(number)


def place_notes(table: dict, name: str, key_columns: list[str], metric_columns: list[str], rows: list[dict],
                require_rows: bool = True, field: str | None = None) -> Notes:
    """Number a table's ``notes`` (in config order; one text, one number) and place each on the table, the
    cells of a metric column, the rows its ``row`` selects, or those rows' cells of its metric.

    ``row`` maps key columns to printed values (all must match); ``metric`` is a metric column or a list
    of them. A column the table does not have is an error naming the table and the column, and so is a
    ``row`` that selects no row (unless ``require_rows`` is off). ``field``, the table entry's config path,
    starts the message with the note's path.
    """
    notes = Notes(rows=[[] for _ in rows], cells=[{} for _ in rows])
    for j, note in enumerate(table.get("notes") or []):
        where = f"paper table {name}, notes[{j}]"
        if field is not None:
            where = f"at '{field}.notes[{j}]': {where}"
        metrics = note.get("metric")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        for metric in metrics:
            if metric not in metric_columns:
                raise ValueError(f"{where}: metric '{metric}' is not a metric column of {name}; its metric "
                                 f"columns (in the CSV and under metrics): {', '.join(metric_columns) or 'none'}")
        selector = note.get("row") or {}
        for column in selector:
            if column not in key_columns:
                raise ValueError(f"{where}: row column '{column}' is not a key column of {name}; its key "
                                 f"columns: {', '.join(key_columns) or 'none'}")
        selected = [i for i, row in enumerate(rows)
                    if all(_same(row[column], value) for column, value in selector.items())]
        if selector and not selected and require_rows:
            wanted = ", ".join(f"{column}={value}" for column, value in selector.items())
            raise ValueError(f"{where}: row {{{wanted}}} selects no row of {name}; a row note matches the "
                             "printed values of key columns")
        if note["text"] not in notes.texts:
            notes.texts.append(note["text"])
        number = notes.texts.index(note["text"]) + 1
        if not selector and not metrics:  # the whole table
            _add(notes.table, number)
        elif not metrics:  # the rows it selects
            for i in selected:
                _add(notes.rows[i], number)
        else:  # the metric's cells, in the rows it selects or in every row
            for i in selected if selector else range(len(rows)):
                for metric in metrics:
                    _add(notes.cells[i].setdefault(metric, []), number)
    return notes


def check_table_notes(config: dict) -> None:
    """Every configured note names columns its paper table has and selects at least one of its rows
    (a ValueError naming the table and the column otherwise)."""
    for study, table in configured_tables(config):
        path = cfg.paper_table_path(config, table)
        paper = pd.read_csv(path, dtype=str, keep_default_na=False)
        metric_cols, key_cols = split_columns(table, list(paper.columns))
        place_notes(table, f"{path.name} (study {study})", key_cols, metric_cols, paper.to_dict("records"))


def _read_paper_csv(path: Path, field: str) -> pd.DataFrame:
    """A paper CSV as text cells; a file pandas would read differently from what it shows (a repeated column
    name, a row with more or fewer cells than the header) is an error naming the file and the line."""
    import csv

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
    """(fields, {prefix: keys}): the run fields a paper row can select by (see :func:`run_field`)."""
    schema = cfg._schema()  # not changed here: no copy needed
    spec = config["studies"][study]
    study_schema = schema["properties"]["studies"]["additionalProperties"]["properties"]
    return ([*RUN_FIELDS[1:], "augment", *spec["grid"]],
            {"recipe": list(schema["definitions"]["recipe"]["properties"]),
             "input": [*study_schema["input"]["properties"], "mean", "std"]})


def _check_selector(config: dict, study: str, selector: dict, field: str) -> None:
    """A paper row selects runs by fields they have (a misspelt one would select no run) and by names that exist."""
    from cnnrepro import datasets, models

    fields, prefixed = _selector_fields(config, study)
    known = {"dataset": tuple(datasets.DATASETS), "model": models.model_names(),
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


def check_paper_table(config: dict, study: str, index: int) -> None:
    """One configured paper table against its CSV; a ValueError starting ``at '<field>':`` otherwise.

    - ``match`` keys are columns of the CSV; ``where`` and the run fields ``match`` selects are run fields;
    - ``metrics``: at least one key is a column of the CSV, and each key is a column of it or, for a map shared
      by several tables of the study (seed 002: an identical map on tables printing different columns), of
      one of those tables' CSVs; each value is a number every run's summary holds (:data:`METRIC_FIELDS`, or
      ``test_f1_by_class.<class>``, ``{column}`` templates filled from each row);
    - rows: no two rows with the same key cells (every column not under metrics); a metric cell is a number
      as printed, or empty (the paper's "-");
    - notes name columns the CSV has and select rows (:func:`place_notes`).
    """
    from cnnrepro.datasets import DATASETS

    table = config["studies"][study]["tables"][index]
    field = f"studies.{study}.tables[{index}]"
    path = cfg.paper_table_path(config, table)
    paper = _read_paper_csv(path, field)
    columns = list(paper.columns)
    listed = ", ".join(columns)
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
    metric_cols, key_cols = split_columns(table, columns)
    if not metric_cols:
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
    records = paper.to_dict("records")
    num_classes = max(DATASETS[d].num_classes for d in config["studies"][study]["datasets"])
    formatter = string.Formatter()

    def describe(i: int) -> str:
        keys = ", ".join(f"{c}={records[i][c]}" for c in key_cols)
        return f"line {i + 2} ({keys})" if keys else f"line {i + 2}"

    for metric in metric_cols:
        source = table["metrics"][metric]
        if source is None:
            continue
        placeholders = [name for _, name, _, _ in formatter.parse(source) if name is not None]
        for name in placeholders:
            if name not in columns:
                raise ValueError(f"at '{field}.metrics.{metric}': {{{name}}} in '{source}' is not a column of "
                                 f"{path}; its columns: {listed}")
        for i, record in enumerate(records if placeholders else records[:1]):
            dotted = source.format(**record)
            problem = metric_field_problem(dotted, num_classes)
            if problem:
                row = f"'{source}' for {describe(i)} of {path}: " if placeholders else ""
                raise ValueError(f"at '{field}.metrics.{metric}': {row}{problem}")
    seen: dict[tuple, int] = {}
    for i, record in enumerate(records):
        key = tuple(record[c] for c in key_cols)
        if key in seen:
            raise ValueError(f"at '{field}.file': {path}, {describe(i)} repeats {describe(seen[key])}: every key "
                             f"column ({', '.join(key_cols)}) has the same value; expected one row per printed "
                             "observation")
        seen[key] = i
        for metric in metric_cols:
            cell = record[metric].strip()
            if cell:
                try:
                    float(cell)
                except ValueError:
                    raise ValueError(f"at '{field}.file': {path}, {describe(i)}, column '{metric}': "
                                     f"{record[metric]!r} is not a number; a metric cell holds the printed digits "
                                     "(decimal point, no thousands separator or unit), or is empty where the paper "
                                     "prints '-'") from None
    place_notes(table, f"{path.name} (study {study})", key_cols, metric_cols, records, field=field)
    check_layout(table, field, path, key_cols, metric_cols, records)


def check_paper_tables(config: dict) -> None:
    """Every configured paper table against its CSV (:func:`check_paper_table`): at the config check, before any
    job runs, and again before aggregation reads its inputs."""
    for study, spec in config["studies"].items():
        for index in range(len(spec["tables"])):
            check_paper_table(config, study, index)


def split_columns(table: dict, columns: list[str]) -> tuple[list[str], list[str]]:
    """(metric columns, key columns) of a paper CSV with these columns."""
    # A shared metrics map may name columns this particular table does not print.
    metric_cols = [m for m in table["metrics"] if m in columns]
    return metric_cols, [c for c in columns if c not in metric_cols]


# --- layout: how the paper printed a table (studies.<name>.tables[i].layout; defaults in the schema) ---

METRIC_DIM = "metric"  # the layout dimension of the metric columns


def layout_dims(table: dict, key_cols: list[str], records: list[dict]) -> tuple[list[str], list[str]]:
    """(row dimensions, column dimensions) of a table as printed: ``layout.rows`` (null: the key columns whose
    value varies, other than the column dimensions) and ``layout.columns``."""
    layout = table.get("layout") or {}
    columns = list(layout.get("columns") or [METRIC_DIM])
    rows = layout.get("rows")
    if rows is None:
        rows = [c for c in key_cols if c not in columns and len({str(r[c]) for r in records}) > 1]
    return list(rows), columns


def shown_metrics(table: dict, metric_cols: list[str]) -> list[str]:
    """The metric columns printed as cells of their own: not the spreads printed after their mean (``± x``)."""
    spreads = {spread for mean, spread in ((table.get("layout") or {}).get("plus_minus") or {}).items()
               if mean in metric_cols}
    return [m for m in metric_cols if m not in spreads]


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
                raise ValueError(f"at '{field}.layout.{where}[{j}]': '{dim}' is neither '{METRIC_DIM}' nor a key column "
                                 f"of {path}; its key columns: {', '.join(key_cols) or 'none'}")
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


def _distinct(values: Iterable[Any]) -> list[str]:
    """Distinct non-empty values, in order of first appearance."""
    return list(dict.fromkeys(str(v) for v in values
                              if not (v is None or v == "" or (isinstance(v, float) and math.isnan(v)))))


def _devices(runs: list[dict], fields: list[str]) -> list[str]:
    """The devices behind a row's numbers: where its runs trained and, for the benchmark's CPU or GPU
    numbers it shows (``cpu_*``/``gpu_*`` fields), where those were measured."""
    names = [r.get("device_name") for r in runs]
    for kind in BENCH_KINDS:
        if any(f.startswith(f"{kind}_") for f in fields):
            names += [r.get(f"{kind}_device") for r in runs]
    return _distinct(names)


def _status_text(runs: list[dict]) -> str:
    """The statuses of a row's runs: one word when they agree (``ok``), else counts (``ok 2, failed 1``)."""
    counts = {status: sum(r.get("status") == status for r in runs) for status in STATUSES}
    present = {status: n for status, n in counts.items() if n}
    if not present:
        return ""
    if len(present) == 1:
        return next(iter(present))
    return ", ".join(f"{status} {n}" for status, n in present.items())


def _unavailable(runs: list[dict], field: str | None, source: str | None) -> str:
    """Why a row has no number of ours for ``field``."""
    if source is None:
        return "not computed by this workflow"
    if not runs:
        return "no configured run matches this row"
    base = vd.field_base(field)
    for kind, fields in (("gpu", GPU_BENCH_FIELDS), ("cpu", CPU_BENCH_FIELDS)):
        if base in fields:
            reasons = _distinct(r.get(f"{kind}_not_measured") for r in runs)
            if reasons:
                return "; ".join("no GPU here" if "no CUDA device" in reason else reason for reason in reasons)
    if not any(r.get("status") == "ok" for r in runs):
        return _status_text(runs)
    return "not measured by our runs"


def paper_table(table: dict, study: str, summaries: list[dict], paper_csv: PathLike,
                rules: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """The paper's table with its key columns, then for each metric ``m`` the printed ``m_paper``, our mean
    ``m_ours`` with ``m_ours_std``, ``m_ours_n`` and the 95 % interval ``m_ours_ci95_low``/``_high`` over the
    runs that have it, ``m_verdict`` and ``m_reason``; then ``runs_ours``, ``status_ours``, ``device_ours``,
    ``deviations_ours`` and ``notes``. ``rules``: the study's verdict rules (the schema's defaults when None)."""
    paper = pd.read_csv(paper_csv, dtype=str, keep_default_na=False)
    clash = [c for c in EXTRA_COLUMNS if c in paper.columns]
    if clash:
        raise ValueError(f"paper table {paper_csv} has a column '{clash[0]}', a name the output uses for its own "
                         "column; rename it in the CSV")
    rules = rules if rules is not None else vd.default_rules()
    metric_cols, key_cols = split_columns(table, list(paper.columns))
    records = paper.to_dict("records")
    notes = place_notes(table, f"{Path(paper_csv).name} (study {study})", key_cols, metric_cols, records)
    row_dims, column_dims = layout_dims(table, key_cols, records)
    shown_keys = [d for d in (*row_dims, *column_dims) if d != METRIC_DIM]
    rows: list[dict] = []
    cells: dict[str, list[vd.Cell]] = {m: [] for m in metric_cols}
    for i, record in enumerate(records):
        selector = row_selector(table, record)
        runs = matching(summaries, study, selector) if selector is not None else []
        out: dict[str, Any] = {c: record[c] for c in key_cols}
        fields = []
        for metric in metric_cols:
            source = table["metrics"][metric]
            field = source.format(**record) if source else None
            stats = vd.Stats()
            if field and runs:
                fields.append(field)
                stats = vd.Stats.of(cfg.get_path(r, field) for r in runs)
            kind, _ = vd.metric_kind(table, metric)
            across = rules[kind]["across"] if kind in rules else "model"
            ranked_by = vd.across_columns(table, key_cols, across)
            group = tuple(record[c] for c in shown_keys if c not in ranked_by) if ranked_by else None
            cells[metric].append(vd.Cell(record[metric], stats, None if stats.n else _unavailable(runs, field, source),
                                         group=group))
            out.update({f"{metric}_paper": record[metric], f"{metric}_ours": _round(stats.mean),
                        f"{metric}_ours_std": _round(stats.std), f"{metric}_ours_n": stats.n,
                        f"{metric}_ours_ci95_low": _round(stats.low), f"{metric}_ours_ci95_high": _round(stats.high)})
        out["runs_ours"] = len(runs)
        out["status_ours"] = _status_text(runs)
        out["device_ours"] = "; ".join(_devices(runs, fields))
        out["deviations_ours"] = ", ".join(_distinct(d for r in runs for d in r.get("deviations") or []))
        out["notes"] = notes.describe(i)
        rows.append(out)
    units = (table.get("layout") or {}).get("units") or {}
    for metric in metric_cols:
        kind, scale = vd.metric_kind(table, metric)
        unit = "pp" if kind == "accuracy" and scale == 1.0 else units.get(metric, "")
        vd.judge_column(cells[metric], rules.get(kind) if kind else None, kind, scale,
                        (table.get("not_comparable") or {}).get(metric), unit)
        for out, cell in zip(rows, cells[metric]):
            out[f"{metric}_verdict"], out[f"{metric}_reason"] = cell.verdict, cell.reason
    columns = [*key_cols, *(f"{m}{suffix}" for m in metric_cols for suffix in METRIC_SUFFIXES), *EXTRA_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


# The first columns of runs.csv: what a run is, how it ended, where and in what it computed, and its log.
RUN_COLUMNS = ["run_id", *RUN_FIELDS, "status", "device", "device_name", "precision", "deviations", "epochs_run",
               "train_seconds", "started_at", "finished_at", "log"]


def flat_runs(summaries: list[dict]) -> pd.DataFrame:
    rows = []
    for s in summaries:
        row = {k: v for k, v in s.items() if not isinstance(v, dict)}
        row["deviations"] = ", ".join(s.get("deviations") or [])
        row.update({f"recipe.{k}": v for k, v in s.get("recipe", {}).items() if not isinstance(v, (list, dict))})
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = [c for c in RUN_COLUMNS if c in frame]
    return frame[[*first, *(c for c in frame.columns if c not in first)]]


MODEL_COLUMNS = ["params_count", "params_trainable", "size_MiB", "state_dict_MiB", "flops_forward",
                 "cpu_latency_median_ms", "cpu_time_ms_mean", "gpu_latency_median_ms", "gpu_time_ms_mean",
                 "test_top1_pct", "train_seconds"]


def model_comparison(summaries: list[dict]) -> pd.DataFrame:
    """Size, FLOPs, latency and accuracy of every model of every study (means over variants and seeds)."""
    frame = flat_runs(summaries)
    if frame.empty:
        return pd.DataFrame(columns=["study", "dataset", "model", "freeze", *MODEL_COLUMNS, "runs", "device_name",
                                     "deviations"])
    for column in MODEL_COLUMNS:
        if column not in frame:
            frame[column] = None
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    keys = ["study", "dataset", "model", "freeze"]
    grouped = frame.groupby(keys, sort=False)
    out = grouped[MODEL_COLUMNS].mean().reset_index()
    out["runs"] = grouped.size().values
    if "gpu_not_measured" in frame:
        out["gpu_note"] = grouped["gpu_not_measured"].first().values
    # Where the runs trained and with which speed switches, beside the means they produced.
    labels = frame.reindex(columns=[*keys, "device_name", "deviations"]).groupby(keys, sort=False)
    out["device_name"] = labels["device_name"].agg(lambda names: "; ".join(_distinct(names))).values
    out["deviations"] = labels["deviations"].agg(
        lambda texts: ", ".join(_distinct(d for text in _distinct(texts) for d in text.split(", ")))).values
    return out


def table_name(config: dict, table: dict) -> str:
    """A paper table's name: its CSV's file name, which is also its output's (tables/<name>)."""
    return cfg.paper_table_path(config, table).name


def configured_tables(config: dict) -> list[tuple[str, dict]]:
    """(study, table entry) of every paper table in the config."""
    return [(study, table) for study, spec in config["studies"].items() for table in spec["tables"]]


def check_table_files(config: dict, files: Mapping[str, PathLike], what: str, study: str | None = None) -> None:
    """``files`` names exactly the configured paper tables (of ``study``, or of every study), by table name."""
    names = study_tables(config, study) if study else [table_name(config, t) for _, t in configured_tables(config)]
    scope = f"a table of study {study}" if study else "a table any study's tables: entry defines"
    extra = sorted(set(files) - set(names))
    if extra:
        raise ValueError(f"{what} names table '{extra[0]}' ({files[extra[0]]}), which is not {scope}; expected "
                         f"only: {', '.join(names) or 'none'}")
    missing = [name for name in names if name not in files]
    if missing:
        raise ValueError(f"{what} has no file for paper table '{missing[0]}'{f' of study {study}' if study else ''}; "
                         "expected one per configured table")


def _write_csv(frame: pd.DataFrame, path: PathLike) -> Path:
    with io.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def study_tables(config: dict, study: str) -> list[str]:
    """The names of ``study``'s paper tables, in config order."""
    return [table_name(config, table) for table in config["studies"][study]["tables"]]


def aggregate_study(config: dict, study: str, metrics: Iterable[PathLike], bench: Iterable[PathLike],
                    paper_tables: Mapping[str, PathLike], tables_out: Mapping[str, PathLike], runs_out: PathLike,
                    models_out: PathLike, logs: Mapping[str, PathLike] | None = None,
                    partial: bool = False) -> dict[str, Path]:
    """Write ``study``'s paper tables with our numbers and verdicts, and its runs.csv and models.csv; returns
    name -> written path. ``metrics`` and ``bench`` are the study's metrics.json and benchmark records,
    ``paper_tables`` and ``tables_out`` map each of its table names to the paper's CSV and to the output, ``logs``
    its run ids to their training logs; ``partial`` tolerates missing records (see :func:`load_summaries`)."""
    check_table_files(config, paper_tables, "paper_tables", study)
    check_table_files(config, tables_out, "tables_out", study)
    for index in range(len(config["studies"][study]["tables"])):
        check_paper_table(config, study, index)  # as at start-up: a CSV edited since then fails before any input
    summaries = load_summaries(config, metrics, bench, [study], logs, partial)
    rules = vd.study_rules(config, study)
    written = {}
    for table in config["studies"][study]["tables"]:
        name = table_name(config, table)
        frame = paper_table(table, study, summaries, paper_tables[name], rules)
        written[name] = _write_csv(frame, tables_out[name])
        log.info("wrote %s (%d rows, %d with our numbers)", written[name], len(frame),
                 int((frame["runs_ours"] > 0).sum()))
    written["runs.csv"] = _write_csv(flat_runs(summaries), runs_out)
    written["models.csv"] = _write_csv(model_comparison(summaries), models_out)
    return written


def gather(parts: Iterable[PathLike], out: PathLike) -> Path:
    """Concatenate per-study CSVs (runs.csv or models.csv) into one, columns in order of first appearance."""
    frames = [pd.read_csv(path, dtype=str, keep_default_na=False) for path in parts]
    frames = [frame for frame in frames if len(frame.columns)]
    frame = pd.concat(frames, ignore_index=True, sort=False).fillna("") if frames else pd.DataFrame()
    return _write_csv(frame, out)


def gather_tables(runs: Iterable[PathLike], models: Iterable[PathLike], runs_out: PathLike,
                  models_out: PathLike) -> None:
    """Every study's runs.csv and models.csv gathered into one of each."""
    gather(runs, runs_out)
    gather(models, models_out)
    log.info("wrote %s and %s", runs_out, models_out)


def aggregate(config: dict, metrics: Iterable[PathLike], bench: Iterable[PathLike],
              paper_tables: Mapping[str, PathLike], tables_out: Mapping[str, PathLike],
              runs_out: PathLike, models_out: PathLike, logs: Mapping[str, PathLike] | None = None,
              partial: bool = False) -> dict[str, Path]:
    """Every study at once (:func:`aggregate_study` per study, its files picked from the given ones by what they
    say they are), then runs.csv and models.csv of all studies; returns name -> written path."""
    check_table_files(config, paper_tables, "paper_tables")
    check_table_files(config, tables_out, "tables_out")
    check_paper_tables(config)  # as at start-up: a CSV edited since then fails here, before any input is read
    metrics, bench = list(metrics), list(bench)
    # Which study each file belongs to, by its content; a file of no configured study fails in load_summaries.
    study_of_metrics = {Path(p): io.read_json(p)["settings"]["study"] for p in metrics}
    study_of_bench = {Path(p): io.read_json(p)["study"] for p in bench}
    unknown = [p for p, s in {**study_of_metrics, **study_of_bench}.items() if s not in config["studies"]]
    if unknown:
        load_summaries(config, metrics, bench, partial=partial)  # raises, naming the file
    written: dict[str, Path] = {}
    parts: dict[str, list[Path]] = {"runs": [], "models": []}
    folder = Path(runs_out).parent
    for study in config["studies"]:
        names = study_tables(config, study)
        runs_part, models_part = folder / f".{study}.runs.csv", folder / f".{study}.models.csv"
        written.update(aggregate_study(
            config, study, [p for p in metrics if study_of_metrics[Path(p)] == study],
            [p for p in bench if study_of_bench[Path(p)] == study], {n: paper_tables[n] for n in names},
            {n: tables_out[n] for n in names}, runs_part, models_part, logs, partial))
        parts["runs"].append(runs_part)
        parts["models"].append(models_part)
    written["runs.csv"] = gather(parts["runs"], runs_out)
    written["models.csv"] = gather(parts["models"], models_out)
    for path in (*parts["runs"], *parts["models"]):
        path.unlink(missing_ok=True)
    return written
