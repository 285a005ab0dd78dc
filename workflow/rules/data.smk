# Data: download (login node, needs internet), then one compact uint8 tensor file per dataset.


localrules:
    download_dataset,
    fetch_weights,


rule download_dataset:
    output:
        touch(f"{RESULTS}/data/{{dataset}}.source-verified"),
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    retries: 3
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        root=config["data_root"],
    script:
        "../scripts/download_dataset.py"


rule fetch_weights:
    output:
        f"{config['weights_dir']}/{{weights_file}}",
    log:
        f"{RESULTS}/logs/weights/{{weights_file}}.log",
    retries: 3
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        weights_dir=lambda wildcards, output: str(Path(output[0]).parent),
    script:
        "../scripts/fetch_weights.py"


rule prepare_dataset:
    input:
        dataset_source_inputs,
    output:
        data=f"{RESULTS}/data/{{dataset}}.pt",
        sidecar=f"{RESULTS}/data/{{dataset}}.pt.json",
        classes=report(
            f"{RESULTS}/data/{{dataset}}_classes.csv",
            caption="../../report/class_distribution.rst",
            category="Data",
            labels={"dataset": "{dataset}", "kind": "table"},
        ),
        plot=report(
            f"{RESULTS}/data/{{dataset}}_classes.png",
            caption="../../report/class_distribution.rst",
            category="Data",
            labels={"dataset": "{dataset}", "kind": "figure"},
        ),
    log:
        f"{RESULTS}/logs/data/{{dataset}}.log",
    conda:
        "../../envs/cnnrepro.yaml"
    resources:
        mem_mb=lambda wildcards: resources.prepare_mem_mb(
            wildcards.dataset, cfg.data_settings(config, wildcards.dataset)
        ),
    params:
        settings=lambda wildcards: cfg.data_settings(config, wildcards.dataset),
        root=config["data_root"],
    script:
        "../scripts/prepare_dataset.py"
