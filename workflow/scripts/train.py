"""Train one run."""
from cnnrepro.logs import job_log
from cnnrepro.train import RunOutputs, train_run

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    train_run(sm.params.settings, sm.input.data,
              RunOutputs(sm.output.weights, sm.output.history, sm.output.metrics, sm.params.checkpoint),
              sm.params.weights_dir, sm.threads)
