# Benchmarks: size, FLOPs and latency of each trained model, on the GPU and on the CPU.


rule benchmark_gpu:
    input:
        weights=lambda wildcards: run_path(bench_run(wildcards), "weights.pt"),
        data=f"{RESULTS}/data/{{dataset}}.pt",
    output:
        f"{RESULTS}/bench/{BENCH}/gpu.json",
    log:
        f"{RESULTS}/logs/bench/{BENCH}/gpu.log",
    conda:
        "../../envs/cnnrepro.yaml"
    threads: 1
    resources:
        gpu=gpu_request,
    params:
        settings=lambda wildcards: cfg.run_settings(config, bench_run(wildcards)),
        bench=config["benchmark"],
        kind="gpu",
    script:
        "../scripts/benchmark.py"


rule benchmark_cpu:
    input:
        weights=lambda wildcards: run_path(bench_run(wildcards), "weights.pt"),
        data=f"{RESULTS}/data/{{dataset}}.pt",
    output:
        f"{RESULTS}/bench/{BENCH}/cpu.json",
    log:
        f"{RESULTS}/logs/bench/{BENCH}/cpu.log",
    conda:
        "../../envs/cnnrepro.yaml"
    # Holding every local core keeps training jobs off the machine while latency is measured;
    # the torch thread count is benchmark.cpu_threads. On a cluster, profiles/slurm sets the cores.
    threads:
        workflow.cores
        if config["benchmark"]["exclusive"]
        else config["benchmark"]["cpu_threads"]
    params:
        settings=lambda wildcards: cfg.run_settings(config, bench_run(wildcards)),
        bench=config["benchmark"],
        kind="cpu",
    script:
        "../scripts/benchmark.py"
