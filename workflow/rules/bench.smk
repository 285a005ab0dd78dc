# Benchmarks: size, FLOPs and latency of each trained model, on the GPU and on the CPU (cnnrepro.bench).
# One rule body, two rule names: clusters send the two to different partitions by rule name
# (profiles/slurm set-resources), and the CPU one holds the machine while it measures.
from cnnrepro.plan import memory, resources  # noqa: E402


def bench_settings(wildcards):
    return SETTINGS[bench_run(wildcards).id]


def trained_weights(wildcards):
    """The weights a benchmark measures: those of its (study, dataset, model, freeze)'s first run."""
    return expand(rules.train.output.weights, **bench_run(wildcards).wildcards)[0]


def bench_mem_mb(wildcards):
    return memory.bench_mem_mb(
        bench_settings(wildcards), data_settings(wildcards), config["benchmark"]
    )


def bench_runtime(kind):
    def runtime(wildcards, attempt):
        return attempt * resources.bench_runtime_min(
            bench_settings(wildcards), config["benchmark"], kind
        )

    return runtime


rule benchmark_gpu:
    input:
        weights=trained_weights,
        data=rules.prepare_dataset.output.data,
        sidecar=rules.prepare_dataset.output.sidecar,
    output:
        f"{RESULTS}/bench/{BENCH}/gpu.json",
    log:
        f"{RESULTS}/logs/bench/{BENCH}/gpu.log",
    conda:
        "../../envs/cnnrepro.yaml"
    threads: 1
    resources:
        # Alone on its GPU, sharing or not: nothing else may run there while latency is measured.
        gpu=gpu_request,
        gpu_shares=whole_gpu_shares,
        mem_mb=bench_mem_mb,
        runtime=bench_runtime("gpu"),
    params:
        settings=bench_settings,
        bench=config["benchmark"],
        kind="gpu",
    script:
        "../scripts/benchmark.py"


use rule benchmark_gpu as benchmark_cpu with:
    output:
        f"{RESULTS}/bench/{BENCH}/cpu.json",
    log:
        f"{RESULTS}/logs/bench/{BENCH}/cpu.log",
    # Holding every local core keeps training jobs off the machine while latency is measured;
    # the torch thread count is benchmark.cpu_threads. On a cluster, profiles/slurm sets the cores.
    threads:
        workflow.cores
        if config["benchmark"]["exclusive"]
        else config["benchmark"]["cpu_threads"]
    resources:
        gpu=0,
        mem_mb=bench_mem_mb,
        runtime=bench_runtime("cpu"),
    params:
        settings=bench_settings,
        bench=config["benchmark"],
        kind="cpu",
