"""The report's PDF: its LaTeX document compiled with pdflatex, without torch (the report_pdf jobs load nothing
else)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from cnnrepro.runtime import io

log = logging.getLogger(__name__)

PathLike = str | Path


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
