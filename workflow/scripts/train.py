"""Train one run."""
from cnnrepro import pipeline

sm = snakemake  # noqa: F821
pipeline.train_job(sm.params.settings, sm.input.data, sm.output.weights, sm.output.history, sm.output.metrics,
                   sm.params.checkpoint, sm.params.weights_dir, sm.threads, log_path=sm.log[0])
