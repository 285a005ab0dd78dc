"""Benchmark one trained model on the GPU or the CPU."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.bench.job import benchmark_job  # noqa: E402
from cnnrepro.runtime import gpu_slots  # noqa: E402
from cnnrepro.runtime.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    if sm.params.kind == "gpu":
        gpu_slots.acquire(sm.params.settings["device"])  # one GPU per job, before torch initialises CUDA
    # The rule's wildcards are the benchmark's key (cnnrepro.config.BENCH_PATTERN).
    benchmark_job(dict(sm.wildcards.items()), sm.params.settings, sm.input.weights, sm.input.data, sm.params.kind,
                  sm.params.bench, sm.output[0])
