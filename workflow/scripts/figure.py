"""Draw one figure of one study (PNG and PDF) from the files the rule names."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.report.figure_plan import Figure  # noqa: E402
from cnnrepro.report.figures import make  # noqa: E402
from cnnrepro.runtime.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    files = {name: list(sm.input[name]) if not isinstance(sm.input[name], str) else [sm.input[name]]
             for name in sm.input.keys()}
    make(sm.config, Figure(**sm.params.figure), files, sm.output.png, sm.output.pdf)
