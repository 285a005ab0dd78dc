"""Render one report page (a study's, or the full report of every study): HTML and LaTeX."""
from cnnrepro.logs import job_log
from cnnrepro.report import render

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    render(sm.config, sm.params.studies, sm.params.tables, sm.input.runs, sm.params.figures, sm.output.html,
           sm.output.tex, sm.params.repo)
