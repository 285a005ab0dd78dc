"""Render one report page (a study's, or the full report of every study): HTML and LaTeX."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.report.pages import render  # noqa: E402
from cnnrepro.runtime.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    render(sm.config, sm.params.studies, sm.params.tables, sm.input.runs, sm.params.figures, sm.output.html,
           sm.output.tex, sm.params.repo, sm.params.assumptions)
