# Data: download (login node, needs internet), then one compact uint8 tensor file per dataset (cnnrepro.data).
from cnnrepro.plan import memory  # noqa: E402


def dataset_source_inputs(wildcards):
    settings = data_settings(wildcards)
    declared = "facts" in settings  # a dataset the config declares (cnnrepro.data.declared)
    if settings["source"] == "torchvision":
        download = rules.download_declared_dataset if declared else rules.download_dataset
        return expand(download.output[0], dataset=wildcards.dataset)
    if settings["source"] == "npz":
        return list(settings["npz"].values())
    # Image folders are no input: their listing (every file's path, size and time) is in the settings, so a change
    # reruns the preparation.
    return []


def declaration(wildcards):
    """A declared dataset's own keys (class, args, splits): what torchvision's class is called with."""
    return config["data"]["datasets"][wildcards.dataset]


localrules:
    download_dataset,
    download_declared_dataset,
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


# A torchvision dataset a config declares (data.datasets.<name>.class): its own rule, so that the built-in
# datasets' download jobs keep theirs unchanged.
rule download_declared_dataset:
    output:
        touch(f"{RESULTS}/data/{{dataset}}.declared-source-verified"),
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    retries: 3
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        root=config["data_root"],
        declaration=declaration,
    script:
        "../scripts/download_declared_dataset.py"


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
        mem_mb=lambda wildcards: memory.prepare_mem_mb(
            wildcards.dataset, data_settings(wildcards)
        ),
    params:
        settings=data_settings,
        root=config["data_root"],
    script:
        "../scripts/prepare_dataset.py"
