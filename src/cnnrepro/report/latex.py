"""The report in LaTeX: escaping, and one paper table as a booktabs tabular with stacked number cells (the PDF:
cnnrepro.report.pdf)."""

from __future__ import annotations

from typing import Any, Sequence

from cnnrepro.report.table_view import HeadCell, NumberCell

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


def breakable(escaped: str) -> str:
    """Escaped text (a setting's name or value in typewriter type, which LaTeX never hyphenates) that may break
    after a dot or an underscore."""
    return escaped.replace(".", r".\allowbreak{}").replace(r"\_", r"\_\allowbreak{}")


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


