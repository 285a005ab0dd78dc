"""Compile a report's LaTeX document into the PDF beside it."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.report.pdf import compile_pdf  # noqa: E402
from cnnrepro.runtime.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    compile_pdf(sm.input.tex, sm.output[0])
