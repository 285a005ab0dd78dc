"""Benchmark one trained model on the GPU or the CPU."""
from cnnrepro.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.job_server)

from cnnrepro import gpu_slots  # noqa: E402
from cnnrepro.bench_job import benchmark_job  # noqa: E402
from cnnrepro.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    if sm.params.kind == "gpu":
        gpu_slots.acquire(sm.params.settings["device"])  # one GPU per job, before torch initialises CUDA
    benchmark_job(sm.params.settings, sm.input.weights, sm.input.data, sm.params.kind, sm.params.bench, sm.output[0])
