"""One paper table rebuilt from run summaries: the paper's key columns, then for each metric the printed number
beside our mean over the runs its row selects (with their spread, count and 95 % interval) and a verdict
(cnnrepro.tables.verdicts), then which runs, devices and speed switches are behind our numbers, and the notes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.layout import EXTRA_COLUMNS, METRIC_DIM, METRIC_SUFFIXES, layout_dims, place_notes, split_columns
from cnnrepro.tables.select import matching, row_selector
from cnnrepro.tables.summary import BENCH_KINDS, CPU_BENCH_FIELDS, GPU_BENCH_FIELDS, STATUSES, PathLike


def _round(value: float | None) -> Any:
    if value is None:
        return None
    return int(value) if float(value).is_integer() and abs(value) >= 1 else round(float(value), 4)


def distinct(values: Iterable[Any]) -> list[str]:
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
    return distinct(names)


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
            reasons = distinct(r.get(f"{kind}_not_measured") for r in runs)
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
        out["deviations_ours"] = ", ".join(distinct(d for r in runs for d in r.get("deviations") or []))
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
