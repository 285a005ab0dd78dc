"""The report: each paper table as the paper printed it, with the paper's number, ours and the difference in
every cell and a verdict; an overview per study; provenance; figures. One self-contained HTML page and one
standalone LaTeX document per study and for all studies together, and the PDF compiled from the LaTeX.

A table's layout (rows, columns, labels, units, decimals, ``±`` pairs), number and caption are configuration
(``studies.<name>.tables[i]``; defaults in the schema), so a study added by configuration renders like the
built-in ones. The numbers, statistics and verdicts come from the aggregated CSVs (cnnrepro.tables.aggregate), the
runs' provenance from runs.csv, the environment from cnnrepro.report.provenance.

The report rules hand over every file they read (workflow/rules/report.smk); nothing here derives a path.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import pandas as pd

from cnnrepro.report import latex
from cnnrepro.report import provenance as prov
from cnnrepro.report.table_view import MISSING, VERDICT_SYMBOLS, NumberCell, as_number, read_text_csv, table_view
from cnnrepro.runtime import io
from cnnrepro.tables import assumptions
from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.aggregate import NO_NONDETERMINISTIC_OPS, aggregate_study
from cnnrepro.tables.gather import gather
from cnnrepro.tables.layout import study_tables, table_name
from cnnrepro.tables.summary import PathLike, load_summaries

log = logging.getLogger(__name__)

LARGEST = 5  # differences listed per study in the overview


def _image_data_uri(path: PathLike) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _relative(path: PathLike, folder: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def _deterministic_text(ops: str | None, deviations: str) -> str:
    """The runs table's determinism cell, from runs.csv's nondeterministic_ops and deviations."""
    if not ops:
        return MISSING  # a record from before ops were recorded
    # cudnn.benchmark times the algorithms at every start: two runs may pick different ones.
    reasons = [] if ops == NO_NONDETERMINISTIC_OPS else [ops]
    reasons += ["cudnn.benchmark"] if "cudnn.benchmark" in deviations.split(", ") else []
    return f"no: {', '.join(reasons)}" if reasons else "yes"


def _runs_view(runs: pd.DataFrame, study: str, folder: Path) -> list[dict]:
    rows = []
    for record in runs[runs["study"] == study].to_dict("records") if "study" in runs else []:
        log_path = record.get("log") or ""
        seconds = as_number(record.get("train_seconds"))
        top1 = as_number(record.get("test_top1_pct"))
        rows.append({
            "id": record.get("run_id") or "",
            "short": str(record.get("run_id") or "").split("/", 1)[-1],  # the run id without its study
            "status": record.get("status") or "not run",
            "device": record.get("device_name") or MISSING,
            "precision": record.get("precision") or MISSING,
            "deviations": record.get("deviations") or "",
            "deterministic": _deterministic_text(record.get("nondeterministic_ops"), record.get("deviations") or ""),
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
                paper, ours = as_number(cell.paper.split(" ± ")[0].replace(",", "")), as_number(
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
    # study -> its comparison of each assumption's values with the paper (cnnrepro.tables.assumptions), where a
    # sweep made one
    assumptions: Mapping[str, PathLike] = field(default_factory=dict)


def _shown(value: Any) -> str:
    """A setting's value as the report prints it."""
    return "null" if value is None else str(value)


def _assumptions_view(config: dict, study: str, comparison: PathLike | None) -> dict:
    """The study's unstated settings (each with the value it uses, why, and the alternatives) and, after a sweep,
    per value how many of the paper's numbers agree and the headline metric's mean difference."""
    declared = list(assumptions.assumption_rows(config, study))
    frame = pd.read_csv(comparison) if comparison is not None and Path(comparison).is_file() else None
    for row in declared:
        row["value"], row["alternatives"] = _shown(row["value"]), [_shown(v) for v in row["alternatives"]]
        row["where"] = ", ".join(f"{k} {v}" for k, v in row["where"].items())
        row["values"] = [] if frame is None else [
            {"value": "null" if pd.isna(r["value"]) else _shown(r["value"]), "ours": assumptions.is_true(r["declared"]),
             "runs": int(r["runs"]), "agree": int(r["agree"]), "differ": int(r["differ"]),
             "nc": int(r["not_comparable"]), "comparable": int(r["comparable"]),
             "delta": "" if pd.isna(r["headline_mean_abs_delta"]) else f"{r['headline_mean_abs_delta']:.4g}",
             "n": int(r["headline_n"]), "best": assumptions.is_true(r["best"])}
            for r in frame[frame["assumption"] == row["index"]].to_dict("records")]
    headline = None if frame is None or frame.empty else str(frame["headline"].iloc[0])
    return {"declared": declared, "compared": frame is not None, "headline": headline,
            "lines": assumptions.summary_lines(frame) if frame is not None and not frame.empty else []}


def build_context(config: dict, studies: Sequence[str], files: PageFiles, repo: PathLike | None = None,
                  partial: str = "") -> dict:
    """Everything a page prints: provenance, the overview and each study's tables, runs and figures."""
    folder, tex_folder = Path(files.html).parent, Path(files.tex).parent
    wanted = [n for s in studies for n in study_tables(config, s)]
    missing = [n for n in wanted if n not in files.tables]
    if missing:
        raise ValueError(f"tables has no file for paper table '{missing[0]}'; expected one per table of "
                         f"{', '.join(studies)}")
    runs = read_text_csv(files.runs)
    views = []
    for name in studies:
        spec = config["studies"][name]
        rules = vd.study_rules(config, name)
        tables = [table_view(read_text_csv(files.tables[table_name(config, t)]), t, table_name(config, t), rules)
                  for t in spec["tables"]]
        study_runs = runs[runs["study"] == name].to_dict("records") if "study" in runs else []
        views.append({
            "name": name, "title": spec["title"] or name, "reference": spec["reference"],
            "datasets": spec["datasets"], "models": spec["models"], "seeds": spec["seeds"],
            "tables": tables, "overview": _overview(tables),
            "summary": prov.run_summary(study_runs),
            "runs": _runs_view(runs, name, folder),
            "figures": _figures_view(files.figures.get(name, {}), folder, tex_folder),
            "assumptions": _assumptions_view(config, name, files.assumptions.get(name)),
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
# rendering
# =====================================================================================================================


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cnnrepro.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]), trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["tex"] = latex.escape
    env.filters["breakable"] = latex.breakable
    env.filters["textable"] = latex.tabular
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
           repo: PathLike | None = None, assumptions: Mapping[str, PathLike] | None = None) -> None:
    """The report rules' entry point: one study's page, or the full report of every study."""
    render_page(config, list(studies), PageFiles(tables, runs, figures, html, tex, dict(assumptions or {})), repo)


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
    assumptions: PathLike | None = None  # where the comparison of its assumptions goes, after a sweep
    assumption_cells: PathLike | None = None


def render_partial(config: dict, studies: Mapping[str, StudyFiles], runs: PathLike, models: PathLike,
                   html: PathLike, tex: PathLike, repo: PathLike | None = None) -> bool:
    """Aggregate and render what a failed workflow left: each study's tables and page from the records that
    exist (a run without one is ``failed`` or ``not run``, its cells say so), then the full report. Returns
    False, writing nothing, when no run of any study has a record or a log (nothing ran)."""
    ran = any(s.metrics or any(Path(p).is_file() for p in s.logs.values()) for s in studies.values())
    if not ran:
        log.info("no run has a record or a log: no partial report")
        return False
    for name, files in studies.items():
        aggregate_study(config, name, files.metrics, files.bench, files.paper_tables, files.tables, files.runs,
                        files.models, files.logs, partial=True, assumptions_out=files.assumptions,
                        assumption_cells_out=files.assumption_cells)
    compared = {name: files.assumptions for name, files in studies.items() if files.assumptions}
    for name, files in studies.items():
        page = PageFiles(files.tables, files.runs, {name: files.figures}, files.html, files.tex, compared)
        render_page(config, [name], page, repo, _partial_note(config, {name: files}))
    gather([s.runs for s in studies.values()], runs)
    gather([s.models for s in studies.values()], models)
    tables = {k: v for s in studies.values() for k, v in s.tables.items()}
    page = PageFiles(tables, runs, {n: s.figures for n, s in studies.items()}, html, tex, compared)
    render_page(config, list(studies), page, repo, _partial_note(config, studies))
    return True


def _partial_note(config: dict, studies: Mapping[str, StudyFiles]) -> str:
    counts: dict[str, int] = {}
    for name, files in studies.items():
        for summary in load_summaries(config, files.metrics, files.bench, [name], files.logs, partial=True):
            counts[summary["status"]] = counts.get(summary["status"], 0) + 1
    return ("The workflow ended with failed jobs. Runs: "
            + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".")
