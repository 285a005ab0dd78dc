"""Gather every study's runs.csv and models.csv into the workflow's own."""
from cnnrepro.aggregate import gather_tables
from cnnrepro.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    gather_tables(sm.input.runs, sm.input.models, sm.output.runs, sm.output.models)
