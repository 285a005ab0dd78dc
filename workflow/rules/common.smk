# Shared set-up: the start-up checks (cnnrepro.startup), the run list and the names the rules share. Each stage's
# input functions sit in its own rule file, beside the rules that use them.
import os
import sys
from pathlib import Path

# The package lives in src/; this makes a plain checkout work even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cnnrepro import config as cfg  # noqa: E402
from cnnrepro import startup  # noqa: E402
from snakemake.logging import logger  # noqa: E402

# The configuration's checks and each stage's check of what it will read, before any job starts; every run's
# settings (its recipe checked once) and every study's figures come out of them.
try:
    # A job's own snakemake (on a cluster node, a group's member) skips the models' meta-device builds: the main
    # process checked them before submitting it, and they would import torchvision in every job.
    CHECKED = startup.check(config, probe_models=workflow.is_main_process)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

SETTINGS = CHECKED.settings
FIGURES = CHECKED.figures
RESULTS = config["results"]
RUNS = cfg.expand_runs(config)
RUNS_BY_ID = {run.id: run for run in RUNS}
STUDIES = list(config["studies"])
RUN = cfg.RUN_PATTERN
BENCH = cfg.BENCH_PATTERN
# (study, dataset, model, freeze) -> the run whose weights its benchmarks measure
BENCH_TARGETS = cfg.benchmarked_runs(config)


wildcard_constraints:
    study="[A-Za-z0-9_]+",
    dataset="[a-z0-9]+",
    model="(torchvision\.)?[a-z0-9_]+",
    freeze="[A-Za-z0-9_]+",
    variant="[^/]+",
    seed="[0-9]+",


def run_id(wildcards):
    return RUN.format(**wildcards)


def train_settings(wildcards):
    if run_id(wildcards) not in SETTINGS:
        raise WorkflowError(
            f"no configured run is called {run_id(wildcards)}; `cnnrepro runs` lists the runs of this "
            "configuration"
        )
    return SETTINGS[run_id(wildcards)]


def data_settings(wildcards):
    """A dataset's source and sizes (cnnrepro.config.data_settings), for the jobs that read it."""
    return cfg.data_settings(config, wildcards.dataset)


def bench_run(wildcards):
    return BENCH_TARGETS[cfg.BenchKey.of(wildcards)]


def study_runs(study):
    return [run for run in RUNS if run.study == study]


def gpu_request(wildcards=None):
    # A job pinned to the CPU needs no GPU slot, so CPU-only runs are not serialised by --resources gpu=1.
    return 0 if config["device"] == "cpu" else 1


# GPU sharing (config gpu_share k > 1, cnnrepro.plan.share): each GPU has k shares. A job alone on a GPU takes all k
# of them (gpu=1, gpu_shares=k), a small training run one (gpu=0, gpu_shares=1), so Snakemake starts k small runs or
# one other job per GPU. Without sharing there is no gpu_shares resource, and every request is as it always was.
GPU_SHARE = config["gpu_share"]


def whole_gpu_shares(wildcards=None):
    """The GPU shares of a job that holds its GPU alone; None (no such resource) without sharing."""
    return None if GPU_SHARE == 1 else GPU_SHARE * gpu_request()


def global_limit(name):
    """A global resource's limit (--resources, a profile's resources), None when unlimited. Snakemake 9.0 keeps it
    as a number, later versions as a Resource."""
    limit = workflow.global_resources.get(name)
    return getattr(limit, "value", limit)


# The user limits GPUs (`--resources gpu=N`, profiles/default): the shares follow, k per GPU. A cluster run has no
# GPU limit (Slurm assigns devices and shards), so none is set there.
if GPU_SHARE > 1 and global_limit("gpu") is not None and global_limit("gpu_shares") is None:
    workflow.register_resource("gpu_shares", global_limit("gpu") * GPU_SHARE)
