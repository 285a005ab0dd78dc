"""Aggregate one study's runs and benchmarks into its paper tables (with verdicts) and its runs and models."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.runtime.logs import job_log  # noqa: E402
from cnnrepro.tables.aggregate import aggregate_study  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    aggregate_study(sm.config, sm.params.study, sm.input.metrics, sm.input.bench, sm.params.paper_tables,
                    sm.params.tables, sm.output.runs, sm.output.models, sm.params.logs,
                    assumptions_out=sm.output.get("assumptions"),
                    assumption_cells_out=sm.output.get("assumption_cells"))
