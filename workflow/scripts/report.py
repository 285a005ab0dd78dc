"""Render the HTML report and the LaTeX tables."""
from cnnrepro.logs import job_log
from cnnrepro.report import render

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    render(sm.config, sm.params.tables, sm.input.runs, sm.input.models, sm.params.classes, sm.output.html,
           sm.output.tex)
