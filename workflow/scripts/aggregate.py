"""Aggregate every run and benchmark into the paper tables and flat tables."""
from cnnrepro.aggregate import aggregate
from cnnrepro.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    aggregate(sm.config, sm.input.metrics, sm.input.bench, sm.params.paper_tables, sm.params.tables,
              sm.output.runs, sm.output.models)
