"""One aggregated paper table (cnnrepro.tables.paper.paper_table's CSV) arranged as the paper printed it:
header rows, body rows of row headers and number cells (the paper's number, ours, Δ and the verdict), the notes
under it and its verdict counts; the same view feeds the HTML and the LaTeX templates."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd

from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.layout import EXTRA_COLUMNS, METRIC_DIM, METRIC_SUFFIXES, layout_dims, place_notes, shown_metrics
from cnnrepro.tables.summary import PathLike

MISSING = "—"
# Beside our numbers computed with a speed switch the papers did not use: one mark per distinct set.
DEVIATION_MARKS = ("†", "‡", "§", "¶")
VERDICT_SYMBOLS = {vd.AGREE: "✓", vd.DIFFER: "✗", vd.NOT_COMPARABLE: "○"}
VERDICT_CLASSES = {vd.AGREE: "agree", vd.DIFFER: "differ", vd.NOT_COMPARABLE: "nc"}


# =====================================================================================================================
# numbers as printed
# =====================================================================================================================


def as_number(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _group(text: str) -> str:
    """Thousands separators as the papers print counts (``746,638``), only for integers of 5 or more digits."""
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    if digits.isdigit() and len(digits) >= 5:
        return sign + f"{int(digits):,}"
    return text


def format_number(value: float | None, decimals: int | None) -> str:
    """``value`` with ``decimals`` decimals (4 significant digits when the paper printed none in the column)."""
    if value is None:
        return MISSING
    text = f"{value:.{decimals}f}" if decimals is not None else f"{value:.4g}"
    return _group(text)


def format_delta(delta: float, decimals: int | None) -> str:
    text = format_number(abs(delta), decimals)
    zero = text.strip("0.,") == ""
    return ("±" if zero else ("+" if delta > 0 else "−")) + text


@dataclass
class NumberCell:
    """One printed number with ours beside it, ready for either template."""

    paper: str
    ours: str
    delta: str
    verdict: str
    reason: str
    spread: str = ""  # "± std (n=3)" over seeds
    interval: str = ""  # "95 % CI [a, b]"
    unavailable: bool = False
    paper_marks: list[str] = field(default_factory=list)
    ours_marks: list[str] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return VERDICT_SYMBOLS[self.verdict]

    @property
    def css(self) -> str:
        return VERDICT_CLASSES[self.verdict]


@dataclass
class HeadCell:
    text: str
    rowspan: int = 1
    colspan: int = 1
    marks: list[str] = field(default_factory=list)
    css: str = ""


def _label(labels: Mapping[str, str], name: Any) -> str:
    return str(labels.get(str(name), name))


# =====================================================================================================================
# one paper table in its printed layout
# =====================================================================================================================


def read_text_csv(path: PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _columns_of(frame: pd.DataFrame, table: dict) -> tuple[list[str], list[str]]:
    """(metric columns, key columns) of an aggregated table."""
    metric_cols = [m for m in table["metrics"] if f"{m}_paper" in frame.columns]
    derived = {f"{m}{suffix}" for m in metric_cols for suffix in METRIC_SUFFIXES}
    key_cols = [c for c in frame.columns if c not in derived and c not in EXTRA_COLUMNS]
    return metric_cols, key_cols


def _decimals(table: dict, metric: str, records: list[dict]) -> int | None:
    configured = ((table.get("layout") or {}).get("decimals") or {}).get(metric)
    if configured is not None:
        return configured
    printed = [r[f"{metric}_paper"] for r in records if str(r[f"{metric}_paper"]).strip()]
    return max(vd.decimals_of(p) for p in printed) if printed else None


def _deviation_mark(k: int) -> str:
    return DEVIATION_MARKS[k % len(DEVIATION_MARKS)] * (k // len(DEVIATION_MARKS) + 1)


def _ordered(values: Iterable[tuple]) -> list[tuple]:
    return list(dict.fromkeys(values))


def _header_rows(tuples: list[tuple], dims: list[str], labels: Mapping[str, str], units: Mapping[str, str],
                 metric_label) -> list[list[HeadCell]]:
    """Column header rows, one per column dimension, equal neighbours merged into one cell spanning them."""
    rows = []
    for level, dim in enumerate(dims):
        cells: list[HeadCell] = []
        previous = None
        for t in tuples:
            prefix = t[:level + 1]
            if cells and prefix == previous:
                cells[-1].colspan += 1
                continue
            value = t[level]
            cells.append(HeadCell(metric_label(value) if dim == METRIC_DIM else _label(labels, value)))
            previous = prefix
        rows.append(cells)
    return rows


@dataclass
class _Grid:
    """Where each number of an aggregated table goes in the printed layout: its row and column coordinates."""

    table: dict
    records: list[dict]
    metric_cols: list[str]
    key_cols: list[str]
    shown: list[str]
    row_dims: list[str]
    col_dims: list[str]

    @property
    def layout(self) -> dict:
        return self.table.get("layout") or {}

    @property
    def labels(self) -> Mapping[str, str]:
        return self.layout.get("labels") or {}

    @property
    def units(self) -> Mapping[str, str]:
        return self.layout.get("units") or {}

    def metric_label(self, metric: str) -> str:
        unit = self.units.get(metric)
        return _label(self.labels, metric) + (f" ({unit})" if unit else "")

    def coordinate(self, i: int, metric: str, dims: list[str]) -> tuple:
        return tuple(metric if d == METRIC_DIM else self.records[i][d] for d in dims)

    @property
    def places(self) -> list[tuple[int, str]]:
        """(record, metric) of every printed number, in CSV order."""
        return [(i, m) for i in range(len(self.records)) for m in self.shown]

    def row_tuples(self) -> list[tuple]:
        return _ordered(self.coordinate(i, m, self.row_dims) for i, m in self.places)

    def col_tuples(self) -> list[tuple]:
        return _ordered(self.coordinate(i, m, self.col_dims) for i, m in self.places)


def table_view(frame: pd.DataFrame, table: dict, name: str, rules: Mapping[str, dict]) -> dict:
    """An aggregated table (cnnrepro.tables.paper.paper_table's CSV) arranged as the paper printed it: header
    rows, body rows of row headers and number cells (paper, ours, Δ, verdict), the notes under it and its verdict
    counts. Every label a reader needs is beside the number: note marks, deviation signs, reasons."""
    records = frame.to_dict("records")
    metric_cols, key_cols = _columns_of(frame, table)
    grid = _Grid(table, records, metric_cols, key_cols, shown_metrics(table, metric_cols),
                 *layout_dims(table, key_cols, records))
    notes = place_notes(table, name, key_cols, metric_cols, records, require_rows=False)
    cells, signs = _number_cells(grid, rules, notes)
    row_heads, col_heads = _row_note_marks(grid, notes, cells)
    header = _header(grid, col_heads)
    counts = {v: 0 for v in vd.VERDICTS}
    for cell in cells.values():
        counts[cell.verdict] += 1
    labels = grid.labels
    constants = [(c, str(records[0][c])) for c in key_cols
                 if c not in (*grid.row_dims, *grid.col_dims) and len({str(r[c]) for r in records}) == 1] \
        if records else []
    return {
        "name": name,
        "anchor": re.sub(r"[^A-Za-z0-9_-]+", "-", name),
        "number": table.get("number") or "",
        "caption": table.get("caption") or "",
        "constants": ", ".join(f"{_label(labels, c)}: {_label(labels, v)}" for c, v in constants),
        "header": header,
        "body": _body(grid, cells, row_heads),
        "row_dims": len(grid.row_dims),
        "columns": len(grid.col_tuples()),
        "marks": [str(n) for n in notes.table],
        "notes": [{"mark": str(n), "text": text} for n, text in enumerate(notes.texts, 1)],
        "legend": [{"mark": sign, "text": f"computed with: {deviations}"} for deviations, sign in signs.items()],
        # Why numbers of ours were not compared (printed under the LaTeX table; in the HTML cell itself).
        "not_compared": list(dict.fromkeys(c.reason for c in cells.values()
                                           if c.verdict == vd.NOT_COMPARABLE and not c.unavailable
                                           and c.paper != MISSING)),
        "counts": counts,
        "seeds": max((int(float(r.get(f"{m}_ours_n") or 0)) for r in records for m in grid.shown), default=0),
        "cells": [(i, m, cells[(i, m)]) for i, m in grid.places],
        "where": {(i, m): _where(grid.row_dims, grid.col_dims, records[i], m, labels, grid.metric_label)
                  for i, m in grid.places},
    }


def _number_cells(grid: _Grid, rules: Mapping[str, dict], notes) -> tuple[dict, dict[str, str]]:
    """Every printed number's cell with its note marks and deviation sign; and the signs, by deviation set."""
    plus_minus = grid.layout.get("plus_minus") or {}
    signs: dict[str, str] = {}
    cells: dict[tuple[int, str], NumberCell] = {}
    for i, m in grid.places:
        record = grid.records[i]
        spread = plus_minus.get(m) if plus_minus.get(m) in grid.metric_cols else None
        cell = _number_cell(grid.table, rules, record, m, spread, _decimals(grid.table, m, grid.records), grid.units)
        cell.paper_marks += [str(n) for n in notes.cells[i].get(m, [])]
        cell.ours_marks += [str(n) for n in notes.cells[i].get(m, [])]
        deviations = str(record.get("deviations_ours") or "")
        if deviations and not cell.unavailable:
            cell.ours_marks.append(signs.setdefault(deviations, _deviation_mark(len(signs))))
        cells[(i, m)] = cell
    return cells, signs


def _row_note_marks(grid: _Grid, notes, cells: dict) -> tuple[dict[tuple, list[str]], dict[tuple, list[str]]]:
    """A row note goes on the header that names the CSV row when its numbers fill one printed row or column
    (returned: marks by row and by column), else on each of its cells."""
    row_heads: dict[tuple, list[str]] = {}
    col_heads: dict[tuple, list[str]] = {}
    for i, numbers in enumerate(notes.rows):
        if not numbers:
            continue
        marks = [str(n) for n in numbers]
        rows_of = {grid.coordinate(i, m, grid.row_dims) for m in grid.shown}
        cols_of = {grid.coordinate(i, m, grid.col_dims) for m in grid.shown}
        if len(rows_of) == 1 and grid.row_dims:
            row_heads.setdefault(next(iter(rows_of)), []).extend(marks)
        elif len(cols_of) == 1 and grid.col_dims:
            col_heads.setdefault(next(iter(cols_of)), []).extend(marks)
        else:
            for m in grid.shown:
                cells[(i, m)].paper_marks += marks
    return row_heads, col_heads


def _header(grid: _Grid, col_heads: dict[tuple, list[str]]) -> list[list[HeadCell]]:
    col_tuples = grid.col_tuples()
    header = _header_rows(col_tuples, grid.col_dims, grid.labels, grid.units, grid.metric_label)
    if header:
        for column, marks in col_heads.items():
            header[-1][col_tuples.index(column)].marks += marks
        # The corner names the row dimensions; over the metric names it names the columns when the paper did
        # (seed 004's "Epochs | 50 | 150 | 300").
        named = " / ".join(grid.labels[d] for d in grid.col_dims if d in grid.labels)
        corner = [HeadCell(named if d == METRIC_DIM else _label(grid.labels, d), rowspan=len(header), css="corner")
                  for d in grid.row_dims]
        header[0] = [*corner, *header[0]]
    return header


def _body(grid: _Grid, cells: dict, row_heads: dict[tuple, list[str]]) -> list[list]:
    """Each printed row: its row headers (a repeated one left blank), then its number cells (None: no number)."""
    at = {(grid.coordinate(i, m, grid.row_dims), grid.coordinate(i, m, grid.col_dims)): (i, m)
          for i, m in grid.places}
    col_tuples = grid.col_tuples()
    body = []
    previous: tuple = ()
    for row in grid.row_tuples():
        heads = []
        for level, dim in enumerate(grid.row_dims):
            repeated = previous[:level + 1] == row[:level + 1] if previous else False
            text = grid.metric_label(row[level]) if dim == METRIC_DIM else _label(grid.labels, row[level])
            heads.append(HeadCell("" if repeated else text, css="cont" if repeated else ""))
        if heads:
            heads[-1].marks += row_heads.get(row, [])
        previous = row
        body.append([*heads, *(cells.get(at[(row, column)]) if (row, column) in at else None
                               for column in col_tuples)])
    return body


def _where(row_dims, col_dims, record, metric, labels, metric_label) -> str:
    parts = [metric_label(metric) if d == METRIC_DIM else _label(labels, record[d]) for d in (*row_dims, *col_dims)]
    if METRIC_DIM not in (*row_dims, *col_dims):
        parts.append(metric_label(metric))
    return " · ".join(parts)


def _number_cell(table: dict, rules: Mapping[str, dict], record: dict, metric: str, spread: str | None,
                 decimals: int | None, units: Mapping[str, str]) -> NumberCell:
    paper_text = _group(str(record[f"{metric}_paper"]).strip())
    if spread and str(record[f"{spread}_paper"]).strip():
        paper_text += f" ± {record[f'{spread}_paper']}"
    paper_text = paper_text or MISSING
    mean = as_number(record.get(f"{metric}_ours"))
    verdict = record.get(f"{metric}_verdict") or vd.NOT_COMPARABLE
    reason = record.get(f"{metric}_reason") or ""
    if mean is None:
        # No number of ours: the cell says why (not run, failed, no GPU here, ...).
        unavailable = reason if verdict == vd.NOT_COMPARABLE else MISSING
        return NumberCell(paper_text, unavailable, "", verdict, reason, unavailable=True)
    ours = format_number(mean, decimals)
    if spread:
        spread_mean = as_number(record.get(f"{spread}_ours"))
        if spread_mean is not None:
            ours += f" ± {format_number(spread_mean, decimals)}"
    n = int(float(record.get(f"{metric}_ours_n") or 0))
    std, low, high = (as_number(record.get(f"{metric}_ours{s}")) for s in ("_std", "_ci95_low", "_ci95_high"))
    spread_text = interval = ""
    if n > 1 and not std:
        spread_text = f"(n={n}, all equal)"
    elif n > 1:
        spread_text = f"± {format_number(std, None if decimals is None else decimals + 1)} (n={n})"
        if low is not None and high is not None:
            places = None if decimals is None else decimals + 1
            interval = f"95 % CI [{format_number(low, places)}, {format_number(high, places)}]"
    delta = ""
    paper = as_number(record[f"{metric}_paper"])
    if paper is not None:
        kind, scale = vd.metric_kind(table, metric)
        unit = "pp" if kind == "accuracy" and scale == 1.0 else ""
        delta = format_delta(mean - paper, decimals) + (f" {unit}" if unit else "")
        if kind in rules and rules[kind].get("show_relative") and paper != 0:
            delta += f" ({(mean - paper) / abs(paper) * 100:+.1f} %)".replace("+-", "−").replace("-", "−")
    return NumberCell(paper_text, ours, delta, verdict, reason, spread_text, interval)
