"""The report: each paper table as the paper printed it, with the paper's number, ours and the difference in
every cell and a verdict; an overview per study; provenance; figures. One self-contained HTML page and one
standalone LaTeX document per study and for all studies together, and the PDF compiled from the LaTeX.

A table's layout (rows, columns, labels, units, decimals, ``±`` pairs), number and caption are configuration
(``studies.<name>.tables[i]``; defaults in the schema), so a study added by configuration renders like the
built-in ones. The numbers, statistics and verdicts come from the aggregated CSVs (cnnrepro.aggregate), the
runs' provenance from runs.csv, the environment from cnnrepro.provenance.

The report rules hand over every file they read (workflow/rules/report.smk); nothing here derives a path.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import pandas as pd

from cnnrepro import io
from cnnrepro import provenance as prov
from cnnrepro import verdicts as vd
from cnnrepro.aggregate import (EXTRA_COLUMNS, METRIC_DIM, METRIC_SUFFIXES, PathLike, layout_dims, load_summaries,
                                aggregate_study, place_notes, shown_metrics, study_tables, table_name)

log = logging.getLogger("cnnrepro.report")

MISSING = "—"
# Beside our numbers computed with a speed switch the papers did not use: one mark per distinct set.
DEVIATION_MARKS = ("†", "‡", "§", "¶")
VERDICT_SYMBOLS = {vd.AGREE: "✓", vd.DIFFER: "✗", vd.NOT_COMPARABLE: "○"}
VERDICT_CLASSES = {vd.AGREE: "agree", vd.DIFFER: "differ", vd.NOT_COMPARABLE: "nc"}
LARGEST = 5  # differences listed per study in the overview


# =====================================================================================================================
# numbers as printed
# =====================================================================================================================


def _float(value: Any) -> float | None:
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


def _read(path: PathLike) -> pd.DataFrame:
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


def table_view(frame: pd.DataFrame, table: dict, name: str, rules: Mapping[str, dict]) -> dict:
    """An aggregated table (cnnrepro.aggregate.paper_table's CSV) arranged as the paper printed it: header rows,
    body rows of row headers and number cells (paper, ours, Δ, verdict), the notes under it and its verdict
    counts. Every label a reader needs is beside the number: note marks, deviation signs, reasons."""
    layout = table.get("layout") or {}
    labels, units = layout.get("labels") or {}, layout.get("units") or {}
    plus_minus = layout.get("plus_minus") or {}
    records = frame.to_dict("records")
    metric_cols, key_cols = _columns_of(frame, table)
    shown = shown_metrics(table, metric_cols)
    row_dims, col_dims = layout_dims(table, key_cols, records)
    notes = place_notes(table, name, key_cols, metric_cols, records, require_rows=False)

    def metric_label(metric: str) -> str:
        unit = units.get(metric)
        return _label(labels, metric) + (f" ({unit})" if unit else "")

    def coordinate(record: dict, metric: str, dims: list[str]) -> tuple:
        return tuple(metric if d == METRIC_DIM else record[d] for d in dims)

    places = [(i, m) for i in range(len(records)) for m in shown]
    row_tuples = _ordered(coordinate(records[i], m, row_dims) for i, m in places)
    col_tuples = _ordered(coordinate(records[i], m, col_dims) for i, m in places)
    at = {(coordinate(records[i], m, row_dims), coordinate(records[i], m, col_dims)): (i, m) for i, m in places}

    signs: dict[str, str] = {}
    cells: dict[tuple[int, str], NumberCell] = {}
    counts = {v: 0 for v in vd.VERDICTS}
    for i, m in places:
        record = records[i]
        cell = _number_cell(table, rules, record, m, plus_minus.get(m) if plus_minus.get(m) in metric_cols else None,
                            _decimals(table, m, records), units)
        cell.paper_marks += [str(n) for n in notes.cells[i].get(m, [])]
        cell.ours_marks += [str(n) for n in notes.cells[i].get(m, [])]
        deviations = str(record.get("deviations_ours") or "")
        if deviations and not cell.unavailable:
            cell.ours_marks.append(signs.setdefault(deviations, _deviation_mark(len(signs))))
        cells[(i, m)] = cell
        counts[cell.verdict] += 1

    # A row note goes on the header that names the CSV row when its numbers fill one printed row or column.
    row_heads: dict[tuple, list[str]] = {}
    col_heads: dict[tuple, list[str]] = {}
    for i, numbers in enumerate(notes.rows):
        if not numbers:
            continue
        marks = [str(n) for n in numbers]
        rows_of = {coordinate(records[i], m, row_dims) for m in shown}
        cols_of = {coordinate(records[i], m, col_dims) for m in shown}
        if len(rows_of) == 1 and row_dims:
            row_heads.setdefault(next(iter(rows_of)), []).extend(marks)
        elif len(cols_of) == 1 and col_dims:
            col_heads.setdefault(next(iter(cols_of)), []).extend(marks)
        else:
            for m in shown:
                cells[(i, m)].paper_marks += marks

    header = _header_rows(col_tuples, col_dims, labels, units, metric_label)
    if header:
        for column, marks in col_heads.items():
            header[-1][col_tuples.index(column)].marks += marks
        # The corner names the row dimensions; over the metric names it names the columns when the paper did
        # (seed 004's "Epochs | 50 | 150 | 300").
        named = " / ".join(labels[d] for d in col_dims if d in labels)
        corner = [HeadCell(named if d == METRIC_DIM else _label(labels, d), rowspan=len(header), css="corner")
                  for d in row_dims]
        header[0] = [*corner, *header[0]]
    body = []
    previous: tuple = ()
    for r, row in enumerate(row_tuples):
        heads = []
        for level, dim in enumerate(row_dims):
            value = row[level]
            repeated = previous[:level + 1] == row[:level + 1] if previous else False
            text = metric_label(value) if dim == METRIC_DIM else _label(labels, value)
            heads.append(HeadCell("" if repeated else text, css="cont" if repeated else ""))
        if heads:
            heads[-1].marks += row_heads.get(row, [])
        previous = row
        body.append([*heads, *(cells.get(at[(row, column)]) if (row, column) in at else None
                               for column in col_tuples)])

    constants = [(c, str(records[0][c])) for c in key_cols
                 if c not in (*row_dims, *col_dims) and len({str(r[c]) for r in records}) == 1] if records else []
    return {
        "name": name,
        "anchor": re.sub(r"[^A-Za-z0-9_-]+", "-", name),
        "number": table.get("number") or "",
        "caption": table.get("caption") or "",
        "constants": ", ".join(f"{_label(labels, c)}: {_label(labels, v)}" for c, v in constants),
        "header": header,
        "body": body,
        "row_dims": len(row_dims),
        "columns": len(col_tuples),
        "marks": [str(n) for n in notes.table],
        "notes": [{"mark": str(n), "text": text} for n, text in enumerate(notes.texts, 1)],
        "legend": [{"mark": sign, "text": f"computed with: {deviations}"} for deviations, sign in signs.items()],
        # Why numbers of ours were not compared (printed under the LaTeX table; in the HTML cell itself).
        "not_compared": list(dict.fromkeys(c.reason for c in cells.values()
                                           if c.verdict == vd.NOT_COMPARABLE and not c.unavailable
                                           and c.paper != MISSING)),
        "counts": counts,
        "seeds": max((int(float(r.get(f"{m}_ours_n") or 0)) for r in records for m in shown), default=0),
        "cells": [(i, m, cells[(i, m)]) for i, m in places],
        "where": {(i, m): _where(row_dims, col_dims, records[i], m, labels, metric_label) for i, m in places},
    }


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
    mean = _float(record.get(f"{metric}_ours"))
    verdict = record.get(f"{metric}_verdict") or vd.NOT_COMPARABLE
    reason = record.get(f"{metric}_reason") or ""
    if mean is None:
        # No number of ours: the cell says why (not run, failed, no GPU here, ...).
        unavailable = reason if verdict == vd.NOT_COMPARABLE else MISSING
        return NumberCell(paper_text, unavailable, "", verdict, reason, unavailable=True)
    ours = format_number(mean, decimals)
    if spread:
        spread_mean = _float(record.get(f"{spread}_ours"))
        if spread_mean is not None:
            ours += f" ± {format_number(spread_mean, decimals)}"
    n = int(float(record.get(f"{metric}_ours_n") or 0))
    std, low, high = (_float(record.get(f"{metric}_ours{s}")) for s in ("_std", "_ci95_low", "_ci95_high"))
    spread_text = interval = ""
    if n > 1 and not std:
        spread_text = f"(n={n}, all equal)"
    elif n > 1:
        spread_text = f"± {format_number(std, None if decimals is None else decimals + 1)} (n={n})"
        if low is not None and high is not None:
            places = None if decimals is None else decimals + 1
            interval = f"95 % CI [{format_number(low, places)}, {format_number(high, places)}]"
    delta = ""
    paper = _float(record[f"{metric}_paper"])
    if paper is not None:
        kind, scale = vd.metric_kind(table, metric)
        unit = "pp" if kind == "accuracy" and scale == 1.0 else ""
        delta = format_delta(mean - paper, decimals) + (f" {unit}" if unit else "")
        if kind in rules and rules[kind].get("show_relative") and paper != 0:
            delta += f" ({(mean - paper) / abs(paper) * 100:+.1f} %)".replace("+-", "−").replace("-", "−")
    return NumberCell(paper_text, ours, delta, verdict, reason, spread_text, interval)


# =====================================================================================================================
# pages
# =====================================================================================================================


def _image_data_uri(path: PathLike) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _relative(path: PathLike, folder: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def _runs_view(runs: pd.DataFrame, study: str, folder: Path) -> list[dict]:
    rows = []
    for record in runs[runs["study"] == study].to_dict("records") if "study" in runs else []:
        log_path = record.get("log") or ""
        seconds = _float(record.get("train_seconds"))
        top1 = _float(record.get("test_top1_pct"))
        rows.append({
            "id": record.get("run_id") or "",
            "short": "/".join(str(record.get(k, "")) for k in ("dataset", "model", "freeze", "variant"))
                     + f"/seed{record.get('seed', '')}",
            "status": record.get("status") or "not run",
            "device": record.get("device_name") or MISSING,
            "precision": record.get("precision") or MISSING,
            "deviations": record.get("deviations") or "",
            "epochs": record.get("epochs_run") or "",
            "seconds": "" if seconds is None else f"{seconds:.0f}",
            "top1": "" if top1 is None else f"{top1:.2f}",
            "log": _relative(log_path, folder) if log_path else "",
            "log_exists": bool(log_path) and Path(log_path).is_file(),
        })
    return rows


def _figures_view(figures: Mapping[str, str], folder: Path, tex_folder: Path) -> list[dict]:
    out = []
    for png, caption in figures.items():
        png = Path(png)
        if not png.is_file():
            continue
        pdf = png.with_suffix(".pdf")
        out.append({"uri": _image_data_uri(png), "caption": caption, "name": png.stem,
                    "pdf": _relative(pdf, tex_folder) if pdf.is_file() else None})
    return out


def _overview(tables: list[dict]) -> dict:
    counts = {v: 0 for v in vd.VERDICTS}
    reasons: dict[str, int] = {}
    differences = []
    for view in tables:
        for verdict, n in view["counts"].items():
            counts[verdict] += n
        texts = {n["mark"]: n["text"] for n in view["notes"]}
        for i, m, cell in view["cells"]:
            if cell.verdict == vd.NOT_COMPARABLE:
                reasons[cell.reason] = reasons.get(cell.reason, 0) + 1
            elif cell.verdict == vd.DIFFER:
                paper, ours = _float(cell.paper.split(" ± ")[0].replace(",", "")), _float(
                    cell.ours.split(" ± ")[0].replace(",", ""))
                size = abs(ours - paper) / abs(paper) if paper not in (None, 0) and ours is not None else 0.0
                marks = dict.fromkeys([*cell.paper_marks, *view["marks"]])
                differences.append({"size": size, "table": view["number"] or view["name"], "anchor": view["anchor"],
                                    "where": view["where"][(i, m)], "cell": cell,
                                    "notes": [texts[k] for k in marks if k in texts]})
    # Numbers off by the most first; then rank differences (their values differ by hardware, as expected).
    differences.sort(key=lambda d: (d["cell"].reason.startswith("rank "), -d["size"]))
    comparable = counts[vd.AGREE] + counts[vd.DIFFER]
    return {"counts": counts, "total": sum(counts.values()), "comparable": comparable,
            "reasons": sorted(reasons.items(), key=lambda kv: -kv[1]), "largest": differences[:LARGEST]}


@dataclass
class PageFiles:
    """What one page is made from and where it goes (all paths as the workflow names them)."""

    tables: Mapping[str, PathLike]  # table name -> aggregated CSV
    runs: PathLike  # runs.csv (of the study, or of all)
    figures: Mapping[str, Mapping[str, str]]  # study -> {png: caption}
    html: PathLike
    tex: PathLike


def build_context(config: dict, studies: Sequence[str], files: PageFiles, repo: PathLike | None = None,
                  partial: str = "") -> dict:
    """Everything a page prints: provenance, the overview and each study's tables, runs and figures."""
    folder, tex_folder = Path(files.html).parent, Path(files.tex).parent
    wanted = [n for s in studies for n in study_tables(config, s)]
    missing = [n for n in wanted if n not in files.tables]
    if missing:
        raise ValueError(f"tables has no file for paper table '{missing[0]}'; expected one per table of "
                         f"{', '.join(studies)}")
    runs = _read(files.runs)
    views = []
    for name in studies:
        spec = config["studies"][name]
        rules = vd.study_rules(config, name)
        tables = [table_view(_read(files.tables[table_name(config, t)]), t, table_name(config, t), rules)
                  for t in spec["tables"]]
        study_runs = runs[runs["study"] == name].to_dict("records") if "study" in runs else []
        views.append({
            "name": name, "title": spec["title"] or name, "reference": spec["reference"],
            "datasets": spec["datasets"], "models": spec["models"], "seeds": spec["seeds"],
            "tables": tables, "overview": _overview(tables),
            "summary": prov.run_summary(study_runs),
            "runs": _runs_view(runs, name, folder),
            "figures": _figures_view(files.figures.get(name, {}), folder, tex_folder),
            "page": f"{name}/index.html" if len(studies) > 1 else None,
        })
    return {
        "title": "cnnrepro report" if len(studies) > 1 else f"cnnrepro report: {views[0]['title']}",
        "single": len(studies) == 1,
        "environment": prov.environment(repo or folder, config),
        "studies": views,
        "partial": partial,
        "rules": config["verdicts"],
        "missing": MISSING,
        "symbols": VERDICT_SYMBOLS,
        "full_report": "../index.html" if len(studies) == 1 else None,
    }


# =====================================================================================================================
# LaTeX
# =====================================================================================================================

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--", "–": "--", "−": r"\textminus{}",
        "±": r"\textpm{}", "Δ": r"$\Delta$", "≠": r"$\neq$", "≤": r"$\leq$", "≥": r"$\geq$", "×": r"\texttimes{}",
        "→": r"$\to$", "…": r"\dots{}", "✓": r"\agree{}", "✗": r"\differ{}", "○": r"\nc{}", "†": r"\dag{}",
        "‡": r"\ddag{}", "§": r"\S{}", "¶": r"\P{}", "·": r"\textperiodcentered{}", "’": "'", "“": "``", "”": "''"}


def _latex_escape(text: Any) -> str:
    out = []
    for ch in str(text):
        if ch in _TEX:
            out.append(_TEX[ch])
        elif ord(ch) < 0x100:
            out.append(ch)  # Latin-1 letters: inputenc's utf8 maps them
        else:
            out.append("?")  # a character LaTeX's default fonts lack: never a compile error
    return "".join(out)


def _tex_marks(marks: Sequence[str]) -> str:
    return rf"\textsuperscript{{{','.join(_latex_escape(m) for m in marks)}}}" if marks else ""


def _latex_number_cell(cell: NumberCell | None) -> str:
    if cell is None:
        return ""
    lines = [_latex_escape(cell.paper) + _tex_marks(cell.paper_marks)]
    ours = _latex_escape(cell.ours)
    lines.append((rf"\textit{{\footnotesize {ours}}}" if cell.unavailable else rf"\textbf{{{ours}}}")
                 + _tex_marks(cell.ours_marks))
    if cell.spread:
        lines.append(rf"{{\scriptsize {_latex_escape(cell.spread)}}}")
    if cell.interval:
        lines.append(rf"{{\scriptsize {_latex_escape(cell.interval)}}}")
    lines.append(rf"{{\footnotesize {_latex_escape(cell.delta)}}}~{_latex_escape(cell.symbol)}")
    return r"\stack{" + r"\\".join(lines) + "}"


def _latex_head(cell: HeadCell, row: bool = False) -> str:
    """A header cell; a long one on two lines (never a table wider than the page): column headers bottom-aligned,
    row headers top-aligned with their numbers."""
    text = _latex_escape(cell.text)
    words = cell.text.split()
    if len(cell.text) > (22 if row else 16) and len(words) > 1:
        half = len(cell.text) / 2
        cut = min(range(1, len(words)), key=lambda k: abs(len(" ".join(words[:k])) - half))
        text = (r"\rowhead{" if row else r"\head{") + _latex_escape(" ".join(words[:cut])) + r"\\" \
            + _latex_escape(" ".join(words[cut:])) + "}"
    return text + _tex_marks(cell.marks)


def _latex_table(view: dict) -> str:
    """The tabular of one table view (header rows with \\multicolumn spans, body of stacked number cells)."""
    spec = "l" * view["row_dims"] + "r" * view["columns"]
    lines = [rf"\begin{{tabular}}{{@{{}}{spec}@{{}}}}", r"\toprule"]
    for level, row in enumerate(view["header"]):
        cells = []
        for cell in row:
            if cell.css == "corner" and level > 0:
                continue
            text = _latex_head(cell)
            cells.append(rf"\multicolumn{{{cell.colspan}}}{{c}}{{{text}}}" if cell.colspan > 1 else text)
        if level > 0:
            cells = [""] * view["row_dims"] + cells
        lines.append(" & ".join(cells) + r" \\")
        spans = []
        column = view["row_dims"] + 1
        for cell in row:
            if cell.css == "corner":
                continue
            if cell.colspan > 1:
                spans.append(rf"\cmidrule(lr){{{column}-{column + cell.colspan - 1}}}")
            column += cell.colspan
        if spans and level < len(view["header"]) - 1:
            lines.append(" ".join(spans))
    lines.append(r"\midrule")
    for k, row in enumerate(view["body"]):
        cells = [_latex_head(c, row=True) if isinstance(c, HeadCell) else _latex_number_cell(c) for c in row]
        lines.append(" & ".join(cells) + r" \\" + (r" \addlinespace[5pt]" if k < len(view["body"]) - 1 else ""))
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


# =====================================================================================================================
# rendering
# =====================================================================================================================


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnnrepro", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]), trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["tex"] = _latex_escape
    env.filters["textable"] = _latex_table
    env.tests["numbercell"] = lambda cell: isinstance(cell, NumberCell)
    return env


def render_page(config: dict, studies: Sequence[str], files: PageFiles, repo: PathLike | None = None,
                partial: str = "") -> None:
    """Write one page (HTML and LaTeX) of ``studies``: one study, or all of them for the full report."""
    context = build_context(config, studies, files, repo, partial)
    env = _environment()
    io.write_text(files.html, env.get_template("report.html.j2").render(**context))
    io.write_text(files.tex, env.get_template("report.tex.j2").render(**context))
    log.info("wrote %s and %s", files.html, files.tex)


def render(config: dict, studies: Sequence[str], tables: Mapping[str, PathLike], runs: PathLike,
           figures: Mapping[str, Mapping[str, str]], html: PathLike, tex: PathLike,
           repo: PathLike | None = None) -> None:
    """The report rules' entry point: one study's page, or the full report of every study."""
    render_page(config, list(studies), PageFiles(tables, runs, figures, html, tex), repo)


def compile_pdf(tex: PathLike, pdf: PathLike) -> str:
    """Compile the LaTeX document with pdflatex (twice, for the contents) in a scratch folder; the PDF goes
    beside the .tex (atomically). Figures are found relative to the .tex's folder. Returns pdflatex's log."""
    tex = Path(tex)
    binary = shutil.which("pdflatex")
    if binary is None:
        raise RuntimeError("pdflatex is not installed (Debian: apt-get install texlive-latex-recommended "
                           "texlive-latex-extra lmodern); the HTML report and the .tex are complete without it")
    with tempfile.TemporaryDirectory(prefix="cnnrepro-latex-") as scratch:
        command = [binary, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                   f"-output-directory={scratch}", tex.name]
        for _ in range(2):
            result = subprocess.run(command, cwd=tex.parent, capture_output=True, text=True, errors="replace",
                                    timeout=600)
            if result.returncode != 0:
                lines = (Path(scratch) / tex.with_suffix(".log").name)
                detail = lines.read_text(errors="replace").splitlines()[-40:] if lines.is_file() else \
                    result.stdout.splitlines()[-40:]
                raise RuntimeError(f"pdflatex failed on {tex} (exit {result.returncode}):\n" + "\n".join(detail))
        with io.atomic_path(pdf) as tmp:
            shutil.copyfile(Path(scratch) / tex.with_suffix(".pdf").name, tmp)
        latex_log = (Path(scratch) / tex.with_suffix(".log").name).read_text(errors="replace")
    overfull = [line for line in latex_log.splitlines() if line.startswith("Overfull \\hbox")]
    log.info("wrote %s%s", pdf, f" ({len(overfull)} overfull lines: {overfull[0]} ...)" if overfull else "")
    return latex_log


# =====================================================================================================================
# partial results: after a workflow that ended with failed jobs
# =====================================================================================================================


@dataclass
class StudyFiles:
    """One study's inputs and outputs for a partial report (paths as the workflow names them)."""

    metrics: Sequence[PathLike]  # the metrics.json files that exist
    bench: Sequence[PathLike]  # the benchmark records that exist
    paper_tables: Mapping[str, PathLike]
    tables: Mapping[str, PathLike]
    runs: PathLike
    models: PathLike
    logs: Mapping[str, PathLike]
    figures: Mapping[str, str]  # png -> caption, of the figures that exist
    html: PathLike
    tex: PathLike


def render_partial(config: dict, studies: Mapping[str, StudyFiles], runs: PathLike, models: PathLike,
                   html: PathLike, tex: PathLike, repo: PathLike | None = None) -> bool:
    """Aggregate and render what a failed workflow left: each study's tables and page from the records that
    exist (a run without one is ``failed`` or ``not run``, its cells say so), then the full report. Returns
    False, writing nothing, when no run of any study has a record or a log (nothing ran)."""
    ran = any(s.metrics or any(Path(p).is_file() for p in s.logs.values()) for s in studies.values())
    if not ran:
        log.info("no run has a record or a log: no partial report")
        return False
    from cnnrepro.aggregate import gather

    for name, files in studies.items():
        aggregate_study(config, name, files.metrics, files.bench, files.paper_tables, files.tables, files.runs,
                        files.models, files.logs, partial=True)
    for name, files in studies.items():
        render_page(config, [name], PageFiles(files.tables, files.runs, {name: files.figures}, files.html, files.tex),
                    repo, _partial_note(config, {name: files}))
    gather([s.runs for s in studies.values()], runs)
    gather([s.models for s in studies.values()], models)
    tables = {k: v for s in studies.values() for k, v in s.tables.items()}
    render_page(config, list(studies), PageFiles(tables, runs, {n: s.figures for n, s in studies.items()}, html, tex),
                repo, _partial_note(config, studies))
    return True


def _partial_note(config: dict, studies: Mapping[str, StudyFiles]) -> str:
    counts: dict[str, int] = {}
    for name, files in studies.items():
        for summary in load_summaries(config, files.metrics, files.bench, [name], files.logs, partial=True):
            counts[summary["status"]] = counts.get(summary["status"], 0) + 1
    return ("The workflow ended with failed jobs. Runs: "
            + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".")
