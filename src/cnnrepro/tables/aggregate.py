"""Aggregation: every paper table rebuilt with ``<metric>_paper`` beside ``<metric>_ours``, and each study's
runs.csv and models.csv.

How a paper row finds its runs is data in config (``studies.<name>.tables``): ``match`` maps a paper key column
to run fields, ``where`` adds fixed run fields, ``metrics`` maps each paper metric column to a summary field
(``{column}`` templates take the row's cell), and ``notes`` label deviations from the paper on the whole table, a
metric column, a row or one cell.

Each study is aggregated on its own (:func:`aggregate_study`), so one study's tables never wait for another's
runs. Our number in a cell is the mean over the runs the row selects (seeds are a grid axis), with their standard
deviation, count and 95 % interval, and a verdict against the paper's (cnnrepro.tables.verdicts).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro.runtime import io
from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.gather import gather, write_csv
from cnnrepro.tables.layout import (
    EXTRA_COLUMNS,
    METRIC_DIM,
    METRIC_SUFFIXES,
    configured_tables,
    layout_dims,
    place_notes,
    split_columns,
    study_tables,
    table_name,
)
from cnnrepro.tables.select import matching, row_selector
from cnnrepro.tables.specs import check_paper_table, check_paper_tables
from cnnrepro.tables.summary import (
    BENCH_KINDS,
    CPU_BENCH_FIELDS,
    GPU_BENCH_FIELDS,
    RUN_FIELDS,
    STATUSES,
    PathLike,
    load_summaries,
)

log = logging.getLogger(__name__)


def _round(value: float | None) -> Any:
    if value is None:
        return None
    return int(value) if float(value).is_integer() and abs(value) >= 1 else round(float(value), 4)


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
        return pd.DataFrame(columns=[*cfg.BenchKey._fields, *MODEL_COLUMNS, "runs", "device_name",
                                     "deviations"])
    for column in MODEL_COLUMNS:
        if column not in frame:
            frame[column] = None
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    keys = list(cfg.BenchKey._fields)  # one row per benchmarked model: a benchmark's key
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
        written[name] = write_csv(frame, tables_out[name])
        log.info("wrote %s (%d rows, %d with our numbers)", written[name], len(frame),
                 int((frame["runs_ours"] > 0).sum()))
    written["runs.csv"] = write_csv(flat_runs(summaries), runs_out)
    written["models.csv"] = write_csv(model_comparison(summaries), models_out)
    return written


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
