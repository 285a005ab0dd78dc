# Training: one job per run (study/dataset/model/freeze/variant/seed), cnnrepro.engine.
import functools  # noqa: E402

from cnnrepro import models  # noqa: E402
from cnnrepro.engine import chaining  # noqa: E402
from cnnrepro.plan import memory, resources, runs, share  # noqa: E402


def pretrained_weights(wildcards):
    settings = train_settings(wildcards)
    if not settings["pretrained"]:
        return []
    return [
        str(
            models.weights_file(
                settings["model"], config["weights_dir"], settings["model_options"]
            )
        )
    ]


# Epoch grid chaining (cnnrepro.engine.chaining): a run that differs from a shorter one only in its epoch count
# continues from that run's final state, an output of the shorter run's job and an input of its own.
CHAIN_SOURCES = chaining.chain_sources(SETTINGS) if config["chain_epoch_grids"] else {}
CONTINUED_RUNS = set(CHAIN_SOURCES.values())


def chain_state(wildcards):
    source = CHAIN_SOURCES.get(run_id(wildcards))
    if source is None:
        return []
    return expand(rules.train.output.final_state, **RUNS_BY_ID[source].wildcards)[0]


def chain_source_settings(wildcards):
    source = CHAIN_SOURCES.get(run_id(wildcards))
    return None if source is None else SETTINGS[source]


@functools.cache
def run_plans():
    """Every run's plan as this config trains it (cnnrepro.plan.runs), made once, when first asked for."""
    savings = runs.configured_savings(config)
    return {p.run_id: p for p in runs.plan_runs(config, savings, SETTINGS)}


def shares_a_gpu(wildcards):
    """Whether this run is small enough to share a GPU with other small runs (config gpu_share, cnnrepro.plan.share)."""
    run_plan = run_plans()[run_id(wildcards)]
    return share.shares_gpu(config, train_settings(wildcards), run_plan.device_bytes)


def train_runtime(wildcards, threads, attempt):
    """Minutes: the run's estimate on the reference device x the safety factor, more at each retry."""
    run_plan = run_plans()[run_id(wildcards)]
    return attempt * resources.train_runtime_min(run_plan, train_settings(wildcards), threads)


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
        # A run that shares a GPU holds none alone: one of its GPU's shares locally, a shard of one on SLURM.
        gpu=lambda wildcards: 0 if shares_a_gpu(wildcards) else gpu_request(),
        gpu_shares=lambda wildcards: 1 if shares_a_gpu(wildcards) else whole_gpu_shares(),
        gres=lambda wildcards: share.SLURM_SHARD if shares_a_gpu(wildcards) else None,
        mem_mb=lambda wildcards: memory.train_mem_mb(
            train_settings(wildcards), data_settings(wildcards)
        ),
        runtime=train_runtime,
    params:
        settings=train_settings,
        weights_dir=config["weights_dir"],
        # Not an output: Snakemake would delete it when a job fails, and it is what a rerun resumes from.
        checkpoint=lambda wildcards: f"{RESULTS}/checkpoints/{run_id(wildcards)}/checkpoint.pt",
        chain_from=chain_source_settings,
        keep_final_state=lambda wildcards: run_id(wildcards) in CONTINUED_RUNS,
    script:
        "../scripts/train.py"
