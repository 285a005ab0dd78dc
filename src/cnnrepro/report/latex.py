"""The report in LaTeX: escaping, one paper table as a booktabs tabular with stacked number cells, and the PDF
compiled with pdflatex."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from cnnrepro.report.table_view import HeadCell, NumberCell
from cnnrepro.runtime import io
from cnnrepro.tables.summary import PathLike

log = logging.getLogger(__name__)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--", "–": "--", "−": r"\textminus{}",
        "±": r"\textpm{}", "Δ": r"$\Delta$", "≠": r"$\neq$", "≤": r"$\leq$", "≥": r"$\geq$", "×": r"\texttimes{}",
        "→": r"$\to$", "…": r"\dots{}", "✓": r"\agree{}", "✗": r"\differ{}", "○": r"\nc{}", "†": r"\dag{}",
        "‡": r"\ddag{}", "§": r"\S{}", "¶": r"\P{}", "·": r"\textperiodcentered{}", "’": "'", "“": "``", "”": "''"}


def escape(text: Any) -> str:
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
    return rf"\textsuperscript{{{','.join(escape(m) for m in marks)}}}" if marks else ""


def _latex_number_cell(cell: NumberCell | None) -> str:
    if cell is None:
        return ""
    lines = [escape(cell.paper) + _tex_marks(cell.paper_marks)]
    ours = escape(cell.ours)
    lines.append((rf"\textit{{\footnotesize {ours}}}" if cell.unavailable else rf"\textbf{{{ours}}}")
                 + _tex_marks(cell.ours_marks))
    if cell.spread:
        lines.append(rf"{{\scriptsize {escape(cell.spread)}}}")
    if cell.interval:
        lines.append(rf"{{\scriptsize {escape(cell.interval)}}}")
    lines.append(rf"{{\footnotesize {escape(cell.delta)}}}~{escape(cell.symbol)}")
    return r"\stack{" + r"\\".join(lines) + "}"


def _latex_head(cell: HeadCell, row: bool = False) -> str:
    """A header cell; a long one on two lines (never a table wider than the page): column headers bottom-aligned,
    row headers top-aligned with their numbers."""
    text = escape(cell.text)
    words = cell.text.split()
    if len(cell.text) > (22 if row else 16) and len(words) > 1:
        half = len(cell.text) / 2
        cut = min(range(1, len(words)), key=lambda k: abs(len(" ".join(words[:k])) - half))
        text = (r"\rowhead{" if row else r"\head{") + escape(" ".join(words[:cut])) + r"\\" \
            + escape(" ".join(words[cut:])) + "}"
    return text + _tex_marks(cell.marks)


def tabular(view: dict) -> str:
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
