# Training: one job per run (study/dataset/model/freeze/variant/seed).


rule train:
    input:
        data=rules.prepare_dataset.output.data,
        sidecar=rules.prepare_dataset.output.sidecar,
        weights=pretrained_weights,
        # The shorter run this one continues from (epoch grid chaining), if any.
        chain_state=chain_state,
    output:
        weights=f"{RESULTS}/runs/{RUN}/weights.pt",
        history=f"{RESULTS}/runs/{RUN}/history.csv",
        metrics=f"{RESULTS}/runs/{RUN}/metrics.json",
        # The state after the last epoch when a longer run continues from this one; else a placeholder.
        final_state=f"{RESULTS}/runs/{RUN}/final_state.pt",
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    conda:
        "../../envs/cnnrepro.yaml"
    threads: config["train_threads"]
    resources:
        gpu=gpu_request,
        mem_mb=lambda wildcards: resources.train_mem_mb(
            train_settings(wildcards), cfg.data_settings(config, wildcards.dataset)
        ),
        runtime=train_runtime,
    params:
        settings=train_settings,
        weights_dir=config["weights_dir"],
        # Not an output: Snakemake would delete it when a job fails, and it is what a rerun resumes from.
        checkpoint=lambda wildcards: f"{RESULTS}/checkpoints/{RUN}/checkpoint.pt".format(
            **wildcards
        ),
        chain_from=chain_source_settings,
        keep_final_state=keeps_final_state,
    script:
        "../scripts/train.py"
