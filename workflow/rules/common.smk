# Shared set-up: config validation, the run list, output paths and input functions.
import sys
from pathlib import Path

# The package lives in src/; this makes a plain checkout work even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cnnrepro import config as cfg  # noqa: E402

try:
    cfg.validate(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = config["results"]
RUNS = cfg.expand_runs(config)
RUN = "{study}/{dataset}/{model}/{freeze}/{variant}/seed{seed}"
BENCH = "{study}/{dataset}/{model}/{freeze}"
PAPER_TABLES = sorted(
    {t["file"] for s in config["studies"].values() for t in s.get("tables", [])}
)


wildcard_constraints:
    study="[A-Za-z0-9_]+",
    dataset="[a-z0-9]+",
    model="[a-z0-9_]+",
    freeze="[A-Za-z0-9_]+",
    variant="[^/]+",
    seed="[0-9]+",
    kind="cpu|gpu",


def run_path(run, name):
    return f"{RESULTS}/runs/{run.id}/{name}"


def datasets_used():
    return sorted({run.dataset for run in RUNS})


def bench_targets():
    """One benchmark per (study, dataset, model, freeze), on the first variant's first seed."""
    seen = {}
    for run in RUNS:
        if config["studies"][run.study].get("benchmark", True):
            seen.setdefault((run.study, run.dataset, run.model, run.freeze), run)
    return seen


def bench_run(wildcards):
    return bench_targets()[
        (wildcards.study, wildcards.dataset, wildcards.model, wildcards.freeze)
    ]


def train_settings(wildcards):
    return cfg.run_settings(config, cfg.find_run(config, wildcards))


def pretrained_weights(wildcards):
    settings = train_settings(wildcards)
    if not settings["pretrained"]:
        return []
    from cnnrepro import models

    return [str(models.weights_file(settings["model"], config["weights_dir"]))]


def gpu_request(wildcards=None):
    # A job pinned to the CPU needs no GPU slot, so CPU-only runs are not serialised by --resources gpu=1.
    return 0 if config["device"] == "cpu" else 1


def dataset_source_inputs(wildcards):
    settings = cfg.data_settings(config, wildcards.dataset)
    if settings["source"] == "torchvision":
        return [f"{RESULTS}/data/{wildcards.dataset}.source-verified"]
    if settings["source"] == "npz":
        return list(settings["npz"].values())
    return []


def all_metrics():
    return [run_path(run, "metrics.json") for run in RUNS]


def all_bench():
    return [
        f"{RESULTS}/bench/{s}/{d}/{m}/{f}/{kind}.json"
        for (s, d, m, f) in bench_targets()
        for kind in ("cpu", "gpu")
    ]
