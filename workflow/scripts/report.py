"""Render the HTML report and the LaTeX tables."""
from cnnrepro import pipeline

sm = snakemake  # noqa: F821
pipeline.report_job(sm.config, sm.params.results, sm.output.html, sm.output.tex, log_path=sm.log[0])
