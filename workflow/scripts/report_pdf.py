"""Compile a report's LaTeX document into the PDF beside it."""
from cnnrepro.logs import job_log
from cnnrepro.report import compile_pdf

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    compile_pdf(sm.input.tex, sm.output[0])
