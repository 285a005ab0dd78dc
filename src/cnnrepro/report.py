"""Render the aggregated tables into one self-contained HTML page and a booktabs LaTeX document."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
from pathlib import Path

import jinja2
import pandas as pd

from cnnrepro import io

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


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else pd.DataFrame()


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


def _image_data_uri(path: Path) -> str | None:
    if not path.exists():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def build_context(config: dict, results: str | Path) -> dict:
    results = Path(results)
    tables_dir = results / "tables"
    studies = []
    for name, study in config["studies"].items():
        tables = []
        for table in study.get("tables", []):
            frame = _read(tables_dir / table["file"])
            tables.append({"file": table["file"], **table_view(frame)})
        studies.append({"name": name, "title": study.get("title", name), "reference": study.get("reference", ""),
                        "datasets": study["datasets"], "models": study["models"], "tables": tables})
    datasets = sorted({d for s in config["studies"].values() for d in s["datasets"]})
    figures = [{"dataset": d, "uri": _image_data_uri(results / "data" / f"{d}_classes.png")} for d in datasets]
    return {
        "generated": dt.datetime.now().isoformat(timespec="seconds"),
        "results": str(results),
        "studies": studies,
        "models": table_view(_read(tables_dir / "models.csv")),
        "runs": table_view(_read(tables_dir / "runs.csv")),
        "figures": [f for f in figures if f["uri"]],
        "missing": MISSING,
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnnrepro", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["tex"] = _latex_escape
    return env


def render(config: dict, results: str | Path, html_path: str | Path, tex_path: str | Path) -> None:
    context = build_context(config, results)
    env = _environment()
    io.write_text(html_path, env.get_template("report.html.j2").render(**context))
    io.write_text(tex_path, env.get_template("tables.tex.j2").render(**context))
    log.info("wrote %s and %s", html_path, tex_path)
