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
    CHECKED = startup.check(config)
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
