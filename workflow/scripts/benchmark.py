"""Benchmark one trained model on the GPU or the CPU."""
from cnnrepro import pipeline

sm = snakemake  # noqa: F821
pipeline.benchmark_job(sm.params.settings, sm.input.weights, sm.input.data, sm.params.kind, sm.params.bench,
                       sm.output[0], log_path=sm.log[0])
