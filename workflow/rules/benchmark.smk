# Benchmarks: size, FLOPs and latency of each trained model, on the GPU and on the CPU.
# One rule body, two rule names: clusters send the two to different partitions by rule name
# (profiles/slurm set-resources), and the CPU one holds the machine while it measures.


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
        gpu=gpu_request,
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
