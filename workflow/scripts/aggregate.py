"""Aggregate every run and benchmark into the paper tables and flat tables."""
from cnnrepro import pipeline

sm = snakemake  # noqa: F821
pipeline.aggregate_job(sm.config, sm.params.results, log_path=sm.log[0])
