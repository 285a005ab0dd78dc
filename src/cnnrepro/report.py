"""Render the aggregated tables into one self-contained HTML page and a booktabs LaTeX document.

The report rule hands over every file it reads (workflow/rules/report.smk); nothing here derives a path.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
from pathlib import Path
from typing import Mapping

import jinja2
import pandas as pd

from cnnrepro import io
from cnnrepro.aggregate import EXTRA_COLUMNS, PathLike, check_table_files, place_notes, split_columns, table_name

log = logging.getLogger("cnnrepro.report")

MISSING = "—"
# Beside our numbers computed with a speed switch the papers did not use: one mark per distinct set.
DEVIATION_MARKS = ("†", "‡", "§", "¶")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--",
                    "†": r"\dag{}", "‡": r"\ddag{}", "§": r"\S{}", "¶": r"\P{}"}
    return "".join(replacements.get(ch, ch) for ch in str(text))


def _latex_cell(cell: dict) -> str:
    """A table cell in LaTeX, its marks as a superscript."""
    marks = ",".join(_latex_escape(m) for m in cell["marks"])
    return _latex_escape(cell["text"]) + (rf"\textsuperscript{{{marks}}}" if marks else "")


def _read(path: PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def table_view(frame: pd.DataFrame) -> dict:
    """Columns and rows ready to print. Cells are shown as read (the papers' digits exactly as printed),
    except computed numbers, which get 4 significant digits; an empty cell becomes a dash. Each cell is
    ``{"text", "marks"}``, the marks (note numbers, deviation signs) printed as a superscript beside it."""
    columns = list(frame.columns)
    computed = [not (c.endswith("_paper") or c in ("model", "dataset", "study")) for c in columns]
    rows = [[{"text": _cell(_number(v) if calc else v), "marks": []} for v, calc in zip(record, computed)]
            for record in frame.itertuples(index=False)]
    return {"columns": columns, "rows": rows, "marks": [], "notes": [], "legend": []}


def _deviation_mark(k: int) -> str:
    return DEVIATION_MARKS[k % len(DEVIATION_MARKS)] * (k // len(DEVIATION_MARKS) + 1)


def paper_table_view(frame: pd.DataFrame, table: dict, name: str) -> dict:
    """A paper table ready to print, with every label the reader needs beside the numbers: the table's
    notes (numbered marks on the table, a row's first cell, or a metric's paper and ours cells, and the
    texts under the table) and a sign beside our numbers computed with speed switches the papers did not
    use (explained in a legend line). The ``notes`` column itself is not printed; the marks replace it."""
    columns = list(frame.columns)
    metric_cols, _ = split_columns(table, [c[:-len("_paper")] for c in columns if c.endswith("_paper")])
    key_cols = [c for c in columns if c not in EXTRA_COLUMNS and not c.endswith(("_paper", "_ours"))]
    records = frame.to_dict("records")
    notes = place_notes(table, name, key_cols, metric_cols, records, require_rows=False)
    shown = [c for c in columns if c != "notes"]
    view = table_view(frame[shown])
    index = {c: k for k, c in enumerate(shown)}
    ours = [k for k, c in enumerate(shown) if c.endswith("_ours") and c not in EXTRA_COLUMNS]
    signs: dict[str, str] = {}  # deviations -> its sign
    for i, (record, row) in enumerate(zip(records, view["rows"])):
        if row:
            row[0]["marks"] += [str(n) for n in notes.rows[i]]
        for metric, numbers in notes.cells[i].items():
            for side in ("paper", "ours"):
                if f"{metric}_{side}" in index:
                    row[index[f"{metric}_{side}"]]["marks"] += [str(n) for n in numbers]
        deviations = str(record.get("deviations_ours") or "")
        if deviations:
            sign = signs.setdefault(deviations, _deviation_mark(len(signs)))
            for k in ours:
                if row[k]["text"] != MISSING:
                    row[k]["marks"].append(sign)
    view["marks"] = [str(n) for n in notes.table]
    view["notes"] = [{"mark": str(n), "text": text} for n, text in enumerate(notes.texts, 1)]
    view["legend"] = [{"mark": sign, "text": f"computed with: {deviations}"} for deviations, sign in signs.items()]
    return view


def _number(value):
    """A computed cell as a float (integers such as parameter counts stay as they are)."""
    if value in ("", None) or str(value).lstrip("-").isdigit():
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _image_data_uri(path: PathLike) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def build_context(config: dict, tables: Mapping[str, PathLike], runs: PathLike, models: PathLike,
                  class_plots: Mapping[str, PathLike], folder: PathLike | None = None) -> dict:
    """What the templates print; ``tables`` maps each paper table's name to its aggregated CSV,
    ``class_plots`` each dataset to its class-distribution PNG."""
    check_table_files(config, tables, "tables")
    used = sorted({d for study in config["studies"].values() for d in study["datasets"]})
    if sorted(class_plots) != used:
        raise ValueError(f"class_plots covers datasets {', '.join(sorted(class_plots)) or 'none'}; expected one "
                         f"class-distribution plot for each dataset the studies use: {', '.join(used)}")
    studies = []
    for name, study in config["studies"].items():
        views = []
        for table in study["tables"]:
            file = table_name(config, table)
            views.append({"file": file, **paper_table_view(_read(tables[file]), table, file)})
        studies.append({"name": name, "title": study["title"] or name, "reference": study["reference"],
                        "datasets": study["datasets"], "models": study["models"], "tables": views})
    return {
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "results": str(folder or ""),
        "studies": studies,
        "models": table_view(_read(models)),
        "runs": table_view(_read(runs)),
        "figures": [{"dataset": d, "uri": _image_data_uri(class_plots[d])} for d in sorted(class_plots)],
        "missing": MISSING,
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnnrepro", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["tex"] = _latex_escape
    env.filters["texcell"] = _latex_cell
    return env


def render(config: dict, tables: Mapping[str, PathLike], runs: PathLike, models: PathLike,
           class_plots: Mapping[str, PathLike], html_path: PathLike, tex_path: PathLike) -> None:
    """Write the HTML page and the LaTeX document from exactly the files given."""
    # The page names the folder it sits in: there is no results root to speak of.
    context = build_context(config, tables, runs, models, class_plots, folder=Path(html_path).parent)
    env = _environment()
    io.write_text(html_path, env.get_template("report.html.j2").render(**context))
    io.write_text(tex_path, env.get_template("tables.tex.j2").render(**context))
    log.info("wrote %s and %s", html_path, tex_path)
