"""Compute plan: FLOPs, time and memory of every training run of a configuration on a named device.

A run is counted as images times epochs: per epoch one training pass (forward + backward) and one evaluation pass
(forward), plus the final test and evaluation passes, plus, where features are cached, one forward pass of the
prefix over every image. Backward FLOPs are 2x the forward FLOPs of the trained tail (cnnrepro.plan.cost), not
``FlopCounterMode``'s count, which ignores ``groups`` in the weight gradient of grouped convolutions and inflates
depthwise backward FLOPs about 20x in torch 2.14 (../shared/spec/platform-notes.md).

Schedules that stop early (plateau_drop, keras_plateau) are counted at the authors' observed stop epoch where
the spec has one (seed 003) and otherwise at their ``max_epochs`` cap, an upper bound; every row says which.

Savings are modelled from the configuration and labelled: feature caching where the engine does it
(:func:`cnnrepro.engine.feature_cache.plan`), frozen-prefix caching, warm-started epoch grids and ``eval_every``
(see :class:`Savings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from cnnrepro import config as cfg
from cnnrepro.engine import chaining
from cnnrepro.engine.evaluation import eval_batch_size, eval_every
from cnnrepro.engine.feature_cache import MAX_BYTES
from cnnrepro.plan.cost import ModelCost, Stages, engine_cache, settings_cost, stages
from cnnrepro.plan.memory import device_bytes, run_images, train_mem_mb
from cnnrepro.plan.rates import JOB_STARTUP_SECONDS, Pass, Rate, calibrate_cpu, gpu_rate, reference_cpu_rate

# Optimizer kernels per step on a GPU (torch's foreach implementations: a handful of multi-tensor launches).
GPU_OPTIMIZER_OPS = 20


# ---------------------------------------------------------------------------------------------------------------------
# epochs of a run
# ---------------------------------------------------------------------------------------------------------------------


# Published stop epochs of runs whose schedule stops early (studies.md, seed 003 "Reference outcomes"; the same
# lengths as the authors' Keras histories in semcovici/kmnist, results/history/*.json): (dataset, model, augment).
OBSERVED_STOP_EPOCHS = {
    ("kmnist", "cnn", "none"): 596,
    ("kmnist", "cnn", "kmnist10x"): 334,
    ("kmnist", "cnn_nopool", "none"): 535,
    ("kmnist", "fcnn", "none"): 1154,
    ("kmnist", "fcnn", "kmnist10x"): 507,
}
OBSERVED_SCHEDULE = "keras_plateau"


def run_epochs(settings: dict) -> tuple[int, str]:
    """(epochs, basis): ``fixed`` for a constant schedule; for one that stops early, ``authors`` (their observed
    stop epoch, where the spec has one and the cap allows it) or ``cap`` (max_epochs: an upper bound)."""
    recipe = settings["recipe"]
    if recipe["schedule"] == "constant":
        return recipe["epochs"], "fixed"
    cap = recipe["max_epochs"]
    observed = OBSERVED_STOP_EPOCHS.get((settings["dataset"], settings["model"], settings["augment"]))
    if observed and recipe["schedule"] == OBSERVED_SCHEDULE and observed <= cap:
        return observed, "authors"
    return cap, "cap"


# ---------------------------------------------------------------------------------------------------------------------
# savings
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Savings:
    """Which time savings a plan applies. Each is exact (the same numbers come out) and applies only where it can:

    * ``cache``: train on the output of a fixed frozen prefix computed once instead of on images. ``none``: never;
      ``engine``: where the training engine does it (:func:`cnnrepro.engine.feature_cache.plan`, asked per run: today
      head-only runs over a fixed backbone); ``all``: wherever the frozen prefix is fixed (no BatchNorm statistics
      updated, no active dropout, no per-batch augmentation), e.g. seed 004's fire2-fire7 under
      last_two_fire_and_head (:func:`stages`);
    * ``eval_every``: evaluate every N epochs and after the last, where neither the schedule (monitoring an eval
      metric) nor the checkpoint selection (select: best) reads every epoch. None: each recipe's ``eval_every``;
    * ``chain``: runs that differ only in their epoch count continue each other (:mod:`cnnrepro.engine.chaining`, the
      config's ``chain_epoch_grids``): seed 004's 50/150/300 grid trains 300 epochs per (freeze level, batch size)
      instead of 500.
    """

    cache: str = "engine"
    eval_every: int | None = None
    chain: bool = False

    def label(self) -> str:
        parts = {"none": [], "engine": ["feature caching where the engine does it"],
                 "all": ["frozen-prefix caching wherever the prefix is fixed"]}[self.cache]
        if self.chain:
            parts.append("warm-started epoch grids")
        parts.append("each recipe's eval_every" if self.eval_every is None else
                     "evaluation every epoch" if self.eval_every == 1 else f"eval_every {self.eval_every}")
        return "; ".join(parts)


NO_SAVINGS = Savings(cache="none", eval_every=1, chain=False)


def configured_savings(config: dict) -> Savings:
    """What the configuration does: the engine's caching, each recipe's eval_every, ``chain_epoch_grids``."""
    return Savings(cache="engine", eval_every=None, chain=bool(config.get("chain_epoch_grids", False)))


def all_savings(eval_every: int = 10) -> Savings:
    return Savings(cache="all", eval_every=eval_every, chain=True)


# ---------------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------------


def train_step_cost(cost: ModelCost, stage: Stages, cached: bool) -> tuple[int, int]:
    """(FLOPs per image, ops per step) of one training step: the forward pass over what runs each step (the tail
    alone when the prefix is cached), the backward pass (2x forward) over the tail, the optimizer's kernels."""
    forward_flops, forward_ops = (stage.tail_flops, stage.tail_ops) if cached else (cost.flops, cost.ops)
    return forward_flops + 2 * stage.tail_flops, forward_ops + 2 * stage.tail_ops + GPU_OPTIMIZER_OPS


@dataclass
class RunPlan:
    run_id: str
    study: str
    epochs: int  # epochs the run trains (its own, before chaining)
    epochs_basis: str  # fixed | authors | cap
    trained_epochs: int  # epochs this job trains (after warm-starting from a shorter run)
    chained_from: str | None
    cache: str  # none | head (features) | prefix
    cache_note: str
    evaluations: int
    passes: list[Pass]
    device_bytes: int  # device memory: weights, gradients, optimizer state, activations, data, cache
    host_mem_mb: int
    notes: list[str] = field(default_factory=list)
    # Where the time comes from: assumed rates, or a gpu-check measurement (cnnrepro.plan.calibration.BASES).
    basis: str = "assumed"

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.passes)

    def seconds(self, rate: Rate) -> float:
        return JOB_STARTUP_SECONDS + sum(p.seconds(rate) for p in self.passes)


def plan_run(settings: dict, data_settings: dict, savings: Savings = Savings(), trained_epochs: int | None = None,
             chained_from: str | None = None) -> RunPlan:
    """The passes one training job makes, under ``savings``. ``trained_epochs``/``chained_from``: the job
    continues the run ``chained_from`` and trains only the remaining epochs."""
    cost = settings_cost(settings)
    stage = stages(settings, cost)
    recipe = settings["recipe"]
    epochs, basis = run_epochs(settings)
    trained = epochs if trained_epochs is None else trained_epochs
    images = run_images(settings, data_settings)
    distinct = images["train"] + images["test"] + (0 if images["eval_is_test"] else images["eval"])
    fits = stage.prefix_input_bytes * distinct <= MAX_BYTES
    if savings.cache == "engine":
        cached, note = engine_cache(settings)
    elif savings.cache == "all":
        cached, note = stage.prefix_fixed, (
            "the frozen prefix is fixed: computed once, only the rest trains" if stage.prefix_fixed
            else f"no cache: {stage.prefix_reason}")
    else:
        cached, note = False, "caching off in this plan"
    if cached and not fits:
        cached, note = False, (f"the cache would take {stage.prefix_input_bytes * distinct / 2**30:.1f} GiB, over "
                               f"the {MAX_BYTES / 2**30:.0f} GiB budget (feature_cache.MAX_BYTES)")
    cache = "prefix" if cached else "none"
    if cached:
        tail_flops, tail_ops, prefix_flops, cached_bytes = stage.tail_flops, stage.tail_ops, \
            cost.flops - stage.tail_flops, stage.prefix_input_bytes
    else:
        tail_flops, tail_ops, prefix_flops, cached_bytes = cost.flops, cost.ops, 0, 0
    batch, eval_batch = recipe["batch_size"], eval_batch_size(recipe)
    every = eval_every(recipe, savings.eval_every)
    evaluations = math.ceil(trained / every)
    passes = []
    if cached_bytes:
        passes.append(Pass("cache", distinct, eval_batch, prefix_flops, cost.ops - stage.tail_ops))
    passes.append(Pass("train", images["train"] * trained, batch, *train_step_cost(cost, stage, cached)))
    passes.append(Pass("eval", images["eval"] * evaluations, eval_batch, tail_flops, tail_ops))
    # The record: test and evaluation split once more (twice if the best epoch is not the last).
    final = images["test"] + images["eval"]
    passes.append(Pass("final", final, eval_batch, tail_flops, tail_ops))
    notes = []
    if basis == "authors":
        notes.append(f"{epochs} epochs: the authors' observed stop (cap {recipe['max_epochs']})")
    elif basis == "cap":
        notes.append(f"{epochs} epochs: the max_epochs cap, an upper bound (the schedule stops earlier)")
    if every > 1:
        notes.append(f"evaluated every {every} epochs")
    if chained_from:
        notes.append(f"continues {chained_from.split('/', 4)[-1]}: trains {trained} of its {epochs} epochs")
    return RunPlan(settings["run_id"], settings["study"], epochs, basis, trained, chained_from, cache, note,
                   evaluations, passes, device_bytes(settings, data_settings, cost, stage, cached_bytes * distinct),
                   train_mem_mb(settings, data_settings), notes)


# ---------------------------------------------------------------------------------------------------------------------
# a whole configuration
# ---------------------------------------------------------------------------------------------------------------------


def plan_runs(config: dict, savings: Savings, by_run: dict | None = None) -> list[RunPlan]:
    """Every run's plan under ``savings``; with ``chain``, the runs of an epoch grid continue each other
    (cnnrepro.engine.chaining, as the workflow chains them)."""
    by_run = by_run if by_run is not None else cfg.settings_by_run(config)
    sources = chaining.chain_sources(by_run) if savings.chain else {}
    plans = []
    for run_id, settings in by_run.items():
        data = cfg.data_settings(config, settings["dataset"])
        source = sources.get(run_id)
        if source:
            trained = run_epochs(settings)[0] - run_epochs(by_run[source])[0]
            plans.append(plan_run(settings, data, savings, max(trained, 0), source))
        else:
            plans.append(plan_run(settings, data, savings))
    return plans


@dataclass
class StudyTotal:
    study: str
    runs: int
    flops: float
    seconds: float


def study_totals(plans: Iterable[RunPlan], rate: Rate) -> list[StudyTotal]:
    totals: dict[str, StudyTotal] = {}
    for p in plans:
        total = totals.setdefault(p.study, StudyTotal(p.study, 0, 0.0, 0.0))
        total.runs += 1
        total.flops += p.flops
        total.seconds += p.seconds(rate)
    return list(totals.values())


def rate_for(device: str, config: dict, calibrate: bool = True) -> Rate:
    """The rate of ``device`` (h100, a100, t4 or cpu) for this config's speed switches and thread count."""
    if device == "cpu":
        threads = config["train_threads"]
        return calibrate_cpu(threads) if calibrate else reference_cpu_rate(threads)
    return gpu_rate(device, config["speed"])
