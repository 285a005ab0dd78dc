"""Gather every study's runs.csv and models.csv into the workflow's own."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.runtime.logs import job_log  # noqa: E402
from cnnrepro.tables.gather import gather_tables  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    gather_tables(sm.input.runs, sm.input.models, sm.output.runs, sm.output.models)
