# Shared set-up: config validation, the run list, output paths and input functions.
import sys
from pathlib import Path

# The package lives in src/; this makes a plain checkout work even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cnnrepro import config as cfg  # noqa: E402
from cnnrepro import locks, resources  # noqa: E402
from snakemake.logging import logger  # noqa: E402

# A snakemake killed with SIGKILL leaves its lock behind; rerunning the same command must not need --unlock.
if stale := locks.remove_stale_locks():
    logger.warning(
        f"Removed the lock left by snakemake process {stale['pid']} on {stale['host']}, which is no longer "
        "running (killed before it could unlock); continuing."
    )


onstart:
    locks.record_holder()


try:
    cfg.validate(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
    # Every run's settings, its recipe checked once, before any job starts.
    SETTINGS = cfg.settings_by_run(config)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = config["results"]
RUNS = cfg.expand_runs(config)
RUN = "{study}/{dataset}/{model}/{freeze}/{variant}/seed{seed}"
BENCH = "{study}/{dataset}/{model}/{freeze}"


wildcard_constraints:
    study="[A-Za-z0-9_]+",
    dataset="[a-z0-9]+",
    model="[a-z0-9_]+",
    freeze="[A-Za-z0-9_]+",
    variant="[^/]+",
    seed="[0-9]+",


def datasets_used():
    return sorted({run.dataset for run in RUNS})


BENCH_TARGETS = cfg.benchmarked_runs(config)


def bench_run(wildcards):
    return BENCH_TARGETS[
        (wildcards.study, wildcards.dataset, wildcards.model, wildcards.freeze)
    ]


def bench_settings(wildcards):
    return SETTINGS[bench_run(wildcards).id]


def bench_mem_mb(wildcards):
    return resources.bench_mem_mb(
        bench_settings(wildcards),
        cfg.data_settings(config, wildcards.dataset),
        config["benchmark"],
    )


def train_settings(wildcards):
    run_id = RUN.format(**wildcards)
    if run_id not in SETTINGS:
        raise WorkflowError(
            f"no configured run is called {run_id}; `cnnrepro runs` lists the runs of this configuration"
        )
    return SETTINGS[run_id]


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
        return expand(rules.download_dataset.output[0], dataset=wildcards.dataset)
    if settings["source"] == "npz":
        return list(settings["npz"].values())
    return []


def trained_weights(wildcards):
    """The weights a benchmark measures: those of its (study, dataset, model, freeze)'s first run."""
    return expand(rules.train.output.weights, **bench_run(wildcards).wildcards)[0]


def all_metrics():
    return [expand(rules.train.output.metrics, **run.wildcards)[0] for run in RUNS]


def all_bench():
    keys = [
        dict(zip(("study", "dataset", "model", "freeze"), key)) for key in BENCH_TARGETS
    ]
    return [
        expand(rule.output[0], **key)[0]
        for key in keys
        for rule in (rules.benchmark_cpu, rules.benchmark_gpu)
    ]


# Aggregation and report inputs
# A paper table's name is its CSV's file name, which is also its output's (tables/<name>); the config
# check rejects two tables with one name. The package gets the rules' own files keyed by these names.
PAPER_TABLE_FILES = dict(
    sorted(
        (path.name, str(path))
        for path in (
            cfg.paper_table_path(config, table)
            for study in config["studies"].values()
            for table in study["tables"]
        )
    )
)


def by_paper_table(paths):
    """A rule's list of paper-table files (in PAPER_TABLE_FILES order) as table name -> file."""
    return dict(zip(PAPER_TABLE_FILES, paths, strict=True))


def class_plots():
    return expand(rules.prepare_dataset.output.plot, dataset=datasets_used())


def by_dataset(paths):
    """A rule's list of per-dataset files (in class_plots() order) as dataset -> file."""
    return dict(zip(datasets_used(), paths, strict=True))
