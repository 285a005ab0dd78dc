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
from cnnrepro.aggregate import PathLike, check_table_files, table_name

log = logging.getLogger("cnnrepro.report")

MISSING = "—"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--"}
    return "".join(replacements.get(ch, ch) for ch in str(text))


def _read(path: PathLike) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def table_view(frame: pd.DataFrame) -> dict:
    """Columns and rows ready to print. Cells are shown as read (the papers' digits exactly as printed),
    except computed numbers, which get 4 significant digits; an empty cell becomes a dash."""
    columns = list(frame.columns)
    computed = [not (c.endswith("_paper") or c in ("model", "dataset", "study")) for c in columns]
    rows = [[_cell(_number(v) if calc else v) for v, calc in zip(record, computed)]
            for record in frame.itertuples(index=False)]
    return {"columns": columns, "rows": rows}


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
    studies = []
    for name, study in config["studies"].items():
        views = []
        for table in study.get("tables", []):
            file = table_name(config, table)
            views.append({"file": file, **table_view(_read(tables[file]))})
        studies.append({"name": name, "title": study.get("title", name), "reference": study.get("reference", ""),
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
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["tex"] = _latex_escape
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
