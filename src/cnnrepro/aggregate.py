"""Aggregation: each run's metrics and benchmarks as one flat summary, and every paper table
rebuilt with ``<metric>_paper`` beside ``<metric>_ours``.

How a paper row finds its runs is data in config (``studies.<name>.tables``): ``match`` maps a
paper key column to run fields, ``where`` adds fixed run fields, ``metrics`` maps each paper
metric column to a summary field (``{column}`` templates take the row's cell).

Every file comes in as a path the workflow rule names (workflow/rules/); nothing here derives a path.
Each metrics and benchmark file is identified by what it says it is, and a configured run or benchmark
without its file, or a file the config does not define, is an error rather than an empty cell.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro import io

log = logging.getLogger("cnnrepro.aggregate")

RUN_FIELDS = ("study", "dataset", "model", "freeze", "variant", "seed")
BENCH_FIELDS = ("study", "dataset", "model", "freeze")
BENCH_KINDS = ("cpu", "gpu")
PathLike = str | Path


def summarize(record: dict, bench_cpu: dict | None = None, bench_gpu: dict | None = None) -> dict:
    """One flat dict per run: the fields paper tables and the report read."""
    settings = record["settings"]
    out: dict[str, Any] = {k: settings[k] for k in RUN_FIELDS}
    out.update(status=record.get("status"), augment=settings.get("augment"), recipe=settings.get("recipe", {}),
               grid=settings.get("grid", {}),
               input=settings.get("input", {}), epochs_run=record.get("epochs_run"),
               train_seconds=record.get("train_seconds"), device_name=record.get("device_name"))
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
        unit = settings.get("size_unit", "MiB")
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


def load_summaries(config: dict, metrics: Iterable[PathLike], bench: Iterable[PathLike]) -> list[dict]:
    """One summary per configured run, in config order, from exactly the given files."""
    runs = cfg.expand_runs(config)
    records = _by_identity(metrics, metrics_identity, "metrics")
    _check_complete(records, (run.id for run in runs), "metrics", "run")
    benches = _by_identity(bench, bench_identity, "benchmark")
    _check_complete(benches, benchmarks(config), "benchmark", "benchmark")
    summaries = []
    for run in runs:
        key = (run.study, run.dataset, run.model, run.freeze)
        cpu, gpu = (benches[(*key, kind)][1] if (*key, kind) in benches else None for kind in BENCH_KINDS)
        summaries.append(summarize(records[run.id][1], cpu, gpu))
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


def paper_table(table: dict, study: str, summaries: list[dict], paper_csv: PathLike) -> pd.DataFrame:
    """The paper's table with its key columns, then ``m_paper`` and ``m_ours`` for each metric ``m``."""
    paper = pd.read_csv(paper_csv, dtype=str, keep_default_na=False)
    # A shared metrics map may name columns this particular table does not print.
    metric_cols = [m for m in table["metrics"] if m in paper.columns]
    key_cols = [c for c in paper.columns if c not in metric_cols]
    rows = []
    for record in paper.to_dict("records"):
        selector = row_selector(table, record)
        runs = matching(summaries, study, selector) if selector is not None else []
        out = {c: record[c] for c in key_cols}
        for metric in metric_cols:
            source = table["metrics"][metric]
            ours = None
            if source and runs:
                field = source.format(**record)
                ours = _round(_mean([cfg.get_path(r, field) for r in runs]))
            out[f"{metric}_paper"] = record[metric]
            out[f"{metric}_ours"] = ours
        out["runs_ours"] = len(runs)
        rows.append(out)
    return pd.DataFrame(rows)


def flat_runs(summaries: list[dict]) -> pd.DataFrame:
    rows = []
    for s in summaries:
        row = {k: v for k, v in s.items() if not isinstance(v, dict)}
        row.update({f"recipe.{k}": v for k, v in s.get("recipe", {}).items() if not isinstance(v, (list, dict))})
        rows.append(row)
    return pd.DataFrame(rows)


MODEL_COLUMNS = ["params_count", "params_trainable", "size_MiB", "state_dict_MiB", "flops_forward",
                 "cpu_latency_median_ms", "cpu_time_ms_mean", "gpu_latency_median_ms", "gpu_time_ms_mean",
                 "test_top1_pct", "train_seconds"]


def model_comparison(summaries: list[dict]) -> pd.DataFrame:
    """Size, FLOPs, latency and accuracy of every model of every study (means over variants and seeds)."""
    frame = flat_runs(summaries)
    if frame.empty:
        return pd.DataFrame(columns=["study", "dataset", "model", "freeze", *MODEL_COLUMNS, "runs"])
    for column in MODEL_COLUMNS:
        if column not in frame:
            frame[column] = None
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    grouped = frame.groupby(["study", "dataset", "model", "freeze"], sort=False)
    out = grouped[MODEL_COLUMNS].mean().reset_index()
    out["runs"] = grouped.size().values
    if "gpu_not_measured" in frame:
        out["gpu_note"] = grouped["gpu_not_measured"].first().values
    return out


def table_name(config: dict, table: dict) -> str:
    """A paper table's name: its CSV's file name, which is also its output's (tables/<name>)."""
    return cfg.paper_table_path(config, table).name


def configured_tables(config: dict) -> list[tuple[str, dict]]:
    """(study, table entry) of every paper table in the config."""
    return [(study, table) for study, spec in config["studies"].items() for table in spec["tables"]]


def check_table_files(config: dict, files: Mapping[str, PathLike], what: str) -> None:
    """``files`` names exactly the configured paper tables, by table name."""
    names = [table_name(config, table) for _, table in configured_tables(config)]
    extra = sorted(set(files) - set(names))
    if extra:
        raise ValueError(f"{what} names table '{extra[0]}' ({files[extra[0]]}), which no study's tables: entry "
                         f"defines; expected only: {', '.join(names)}")
    missing = [name for name in names if name not in files]
    if missing:
        raise ValueError(f"{what} has no file for paper table '{missing[0]}'; expected one per configured table")


def _write_csv(frame: pd.DataFrame, path: PathLike) -> Path:
    with io.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def aggregate(config: dict, metrics: Iterable[PathLike], bench: Iterable[PathLike],
              paper_tables: Mapping[str, PathLike], tables_out: Mapping[str, PathLike],
              runs_out: PathLike, models_out: PathLike) -> dict[str, Path]:
    """Write every paper table with our numbers, runs.csv and models.csv; returns name -> written path.

    ``metrics`` and ``bench`` are every run's metrics.json and every benchmark's record; ``paper_tables``
    and ``tables_out`` map each table name (its CSV's file name) to the paper's CSV and to the output.
    """
    check_table_files(config, paper_tables, "paper_tables")
    check_table_files(config, tables_out, "tables_out")
    summaries = load_summaries(config, metrics, bench)
    written = {}
    for study, table in configured_tables(config):
        name = table_name(config, table)
        frame = paper_table(table, study, summaries, paper_tables[name])
        written[name] = _write_csv(frame, tables_out[name])
        log.info("wrote %s (%d rows, %d with our numbers)", written[name], len(frame),
                 int((frame["runs_ours"] > 0).sum()))
    written["runs.csv"] = _write_csv(flat_runs(summaries), runs_out)
    written["models.csv"] = _write_csv(model_comparison(summaries), models_out)
    return written
