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
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro.runtime import io
from cnnrepro.tables import assumptions
from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.gather import gather, write_csv
from cnnrepro.tables.layout import (
    configured_tables,
    study_tables,
    table_name,
)
from cnnrepro.tables.paper import distinct, paper_table
from cnnrepro.tables.specs import check_paper_table, check_paper_tables
from cnnrepro.tables.summary import RUN_FIELDS, PathLike, load_summaries

log = logging.getLogger(__name__)


# runs.csv's nondeterministic_ops of a run in which torch warned of no op without a deterministic implementation.
NO_NONDETERMINISTIC_OPS = "none"
# The first columns of runs.csv: what a run is, how it ended, where and in what it computed, and its log.
RUN_COLUMNS = ["run_id", *RUN_FIELDS, "assumption", "status", "device", "device_name", "precision", "deviations",
               "nondeterministic_ops", "epochs_run", "train_seconds", "started_at", "finished_at", "log"]


def flat_runs(summaries: list[dict]) -> pd.DataFrame:
    rows = []
    for s in summaries:
        row = {k: v for k, v in s.items() if not isinstance(v, dict)}
        row["deviations"] = ", ".join(s.get("deviations") or [])
        if s.get("nondeterministic_ops") is not None:  # an empty cell: not recorded (a record from before)
            row["nondeterministic_ops"] = ", ".join(s["nondeterministic_ops"]) or NO_NONDETERMINISTIC_OPS
        if s.get("assumption"):  # only a sweep's runs: runs.csv without a sweep is as before
            row["assumption"] = f"{s['assumption']['key']}={s['assumption']['value']}"
        row.update({f"recipe.{k}": v for k, v in s.get("recipe", {}).items() if not isinstance(v, (list, dict))})
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = [c for c in RUN_COLUMNS if c in frame]
    return frame[[*first, *(c for c in frame.columns if c not in first)]]


MODEL_COLUMNS = ["params_count", "params_trainable", "size_MiB", "state_dict_MiB", "flops_forward",
                 "cpu_latency_median_ms", "cpu_time_ms_mean", "gpu_latency_median_ms", "gpu_time_ms_mean",
                 "test_top1_pct", "train_seconds"]


def model_comparison(summaries: list[dict]) -> pd.DataFrame:
    """Size, FLOPs, latency and accuracy of every model of every study (means over variants and seeds, of the
    study's own runs: a sweep's runs of an assumption's alternative are not the study's numbers)."""
    frame = flat_runs([s for s in summaries if not s.get("assumption")])
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
    out["device_name"] = labels["device_name"].agg(lambda names: "; ".join(distinct(names))).values
    out["deviations"] = labels["deviations"].agg(
        lambda texts: ", ".join(distinct(d for text in distinct(texts) for d in text.split(", ")))).values
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
                    partial: bool = False, assumptions_out: PathLike | None = None,
                    assumption_cells_out: PathLike | None = None) -> dict[str, Path]:
    """Write ``study``'s paper tables with our numbers and verdicts, and its runs.csv and models.csv; returns
    name -> written path. ``metrics`` and ``bench`` are the study's metrics.json and benchmark records,
    ``paper_tables`` and ``tables_out`` map each of its table names to the paper's CSV and to the output, ``logs``
    its run ids to their training logs; ``partial`` tolerates missing records (see :func:`load_summaries`).
    With a sweep of the study's assumptions (cnnrepro.tables.assumptions.compared), ``assumptions_out`` and
    ``assumption_cells_out`` get the comparison of each assumption's values with the paper."""
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
    if assumptions_out is not None and assumptions.compared(config, study):
        by_value, cells = assumptions.compare(config, study, summaries, paper_tables, rules)
        written["assumptions.csv"] = write_csv(by_value, assumptions_out)
        written["assumptions_headline.csv"] = write_csv(cells, assumption_cells_out)
        for line in assumptions.summary_lines(by_value):
            log.info("the paper supports %s", line)
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
