"""Benchmark one trained model on the GPU or the CPU."""
from cnnrepro.bench import benchmark_job
from cnnrepro.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    benchmark_job(sm.params.settings, sm.input.weights, sm.input.data, sm.params.kind, sm.params.bench, sm.output[0])
