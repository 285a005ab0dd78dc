"""The LaTeX report compiles with pdflatex into a PDF beside it, one table per paper table, figures included, and
no table wider than the page (pdflatex would say 'Overfull \\hbox'; the report never shrinks a table instead)."""

import re
import shutil
from pathlib import Path

import pytest

from cnnrepro import config as cfg
from cnnrepro.report import pdf as report_pdf


def needs_pdflatex():
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: apt-get install texlive-latex-recommended "
                    "texlive-latex-extra lmodern); the LaTeX report is compiled only where it is")


def figure(folder: Path) -> Path:
    """A real figure, PNG and PDF, as the figure rule writes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.plot([1, 2, 3], [2.3, 1.1, 0.6], label="train loss")
    ax.legend()
    for suffix in ("png", "pdf"):
        fig.savefig(folder / f"curves-mnist.{suffix}")
    plt.close(fig)
    return folder / "curves-mnist.png"


def check_pdf(tex: Path, pdf: Path) -> str:
    """Compile ``tex``; the PDF exists, has pages, and no line of the document is wider than the page."""
    latex_log = report_pdf.compile_pdf(tex, pdf)
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")
    pages = int(re.search(r"Output written on .*?\((\d+) pages?", latex_log.replace("\n", "")).group(1))
    assert pages >= 2
    overfull = [line for line in latex_log.splitlines() if line.startswith("Overfull \\hbox")]
    assert not overfull, overfull
    assert "LaTeX Warning: Reference" not in latex_log and "Undefined control sequence" not in latex_log
    return latex_log


@pytest.mark.slow
def test_the_full_report_compiles_with_every_table_and_figure(raw_config, tmp_path):
    needs_pdflatex()
    from tests.test_report import render_all

    config = cfg.validate(cfg.deep_merge(raw_config, cfg.load_yaml(Path("tests/data/sixth_study.yaml"))))
    png = figure(tmp_path / "out" / "report" / "figures" / "tiny_mnist_fcnn_vs_cnn")
    _, tex_text = render_all(config, tmp_path / "out", figures={"tiny_mnist_fcnn_vs_cnn": {str(png): "Curves."}})
    tex = tmp_path / "out" / "report" / "report.tex"
    tables = sum(len(study["tables"]) for study in config["studies"].values())
    assert tex_text.count("\\begin{table}") == tables
    assert "\\includegraphics" in tex_text and "{figures/tiny_mnist_fcnn_vs_cnn/curves-mnist.pdf}" in tex_text
    latex_log = check_pdf(tex, tmp_path / "out" / "report" / "report.pdf")
    assert "curves-mnist.pdf" in latex_log  # the figure was read


def test_compiling_without_pdflatex_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    (tmp_path / "r.tex").write_text("\\documentclass{article}\\begin{document}x\\end{document}")
    with pytest.raises(RuntimeError, match="pdflatex is not installed .*texlive-latex-recommended"):
        report_pdf.compile_pdf(tmp_path / "r.tex", tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


@pytest.mark.slow
def test_a_latex_error_names_the_file_and_the_log_lines(tmp_path):
    needs_pdflatex()
    (tmp_path / "r.tex").write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}")
    with pytest.raises(RuntimeError, match=r"pdflatex failed on .*r.tex(.|\n)*Undefined control sequence"):
        report_pdf.compile_pdf(tmp_path / "r.tex", tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()
