"""The training engine: one run from a compact dataset file to weights, history and metrics.

``train_run`` reads top to bottom: set up (seed, data, model, optimizer, schedule) → resume from the
checkpoint (or continue a shorter run of the same settings: cnnrepro.engine.chaining) → the epoch loop → the record.
The whole split lives on the training device as one uint8 tensor (cnnrepro.data.splits); a checkpoint is written
atomically after every epoch (cnnrepro.engine.checkpoint), so a killed job rerun continues where it stopped; when
the trainable modules follow a fixed frozen prefix the loop runs on that prefix's cached output
(cnnrepro.engine.feature_cache).

Only what the result needs is computed: an epoch is evaluated when ``recipe.eval_every`` says so (every
epoch by default, as the papers' Keras/PyTorch loops did; always when the schedule or ``select: best`` reads
the metric), and an evaluation of a split with the same weights is never repeated (the record reuses the
last epoch's).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnrepro import models
from cnnrepro.data.splits import Split, build_splits, read_verified
from cnnrepro.engine import chaining, checkpoint, determinism, feature_cache, metrics, schedules
from cnnrepro.engine.evaluation import eval_batch_size, eval_every, every_epoch_reasons
from cnnrepro.engine.recipe import (
    autocast,
    build_run_model,
    deterministic_algorithms,
    deviations,
    effective_speed,
    make_loss,
    make_optimizer,
    numerics_record,
    set_backend_flags,
    to_format,
)
from cnnrepro.runtime import io
from cnnrepro.runtime.device import device_name, pick_device
from cnnrepro.runtime.job_server import CHILD_ENV
from cnnrepro.runtime.progress import ProgressBar, format_eta

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "epoch_seconds"]


@dataclass
class RunOutputs:
    weights: Path
    history: Path
    metrics: Path
    checkpoint: Path  # not a Snakemake output: Snakemake would delete it when a job fails
    # The state after the last epoch, for a longer run that continues this one (epoch grid chaining); a small
    # placeholder saying why when no run does. None: not written (the package used outside the workflow).
    final_state: Path | None = None

    def __post_init__(self):
        for name in ("weights", "history", "metrics", "checkpoint", "final_state"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))


@dataclass
class ChainStart:
    """A shorter run of the same settings whose final state this run continues from (cnnrepro.engine.chaining)."""

    state: Path  # that run's final_state.pt
    settings: dict  # that run's settings: its fingerprint must match the state's

    def __post_init__(self):
        self.state = Path(self.state)


@dataclass
class Run:
    """Everything one run's epoch loop reads and changes."""

    settings: dict
    outputs: RunOutputs
    device: torch.device
    generator: torch.Generator
    splits: dict
    model: nn.Module
    trainable: list
    optimizer: torch.optim.Optimizer
    schedule: schedules.Schedule
    criterion: object
    speed: dict
    numerics: dict
    fingerprint: str
    frozen: str
    data_sha256: str | None
    started: float
    history: list = field(default_factory=list)
    seconds_before: float = 0.0  # training time of earlier attempts that this one resumed from
    best_state: dict | None = None
    best_epoch: int | None = None
    epoch: int = 0
    stage: feature_cache.Stage | None = None
    net: nn.Module | None = None
    eval_every: int = 1  # in effect: recipe.eval_every unless the schedule or select: best reads every epoch
    resumed: bool = False  # from this run's own checkpoint (a killed job rerun)
    continued_from: dict | None = None  # {"run_id", "epochs"} of the shorter run this one continued
    # Ops torch ran without a deterministic implementation, in this attempt and the ones it resumed.
    nondeterministic_ops: set = field(default_factory=set)
    keep_final_state: bool = False
    # Evaluations of the current weights by split (the same object for eval and test when eval_split is test);
    # cleared whenever the weights change.
    evaluations: dict = field(default_factory=dict)

    @property
    def recipe(self) -> dict:
        return self.settings["recipe"]

    @property
    def eval_batch(self) -> int:
        return eval_batch_size(self.recipe)

    @property
    def max_epochs(self) -> int:
        return self.schedule.length

    def train_seconds(self) -> float:
        """Wall time spent on this run so far, across resumes."""
        return self.seconds_before + time.time() - self.started

    @property
    def stopped(self) -> bool:
        return bool(self.history) and self.history[-1]["stop"]


def fingerprint(settings: dict, data_sha: str | None, device: torch.device) -> str:
    """What a checkpoint or final state must have been written for. The data's sha256 and the device type are in
    it too: a rebuilt dataset must not continue an old run, nor a GPU run a CPU checkpoint (its RNG state does
    not fit); the speed switches are in the settings."""
    return checkpoint.settings_hash({"settings": settings, "data_sha256": data_sha, "device": device.type})


def data_sha256(data_path: str | Path) -> str | None:
    sidecar = Path(f"{data_path}.json")
    return io.read_json(sidecar).get("sha256") if sidecar.exists() else None


def peak_memory_bytes(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_max_allocated"}
    # ru_maxrss is KiB on Linux. A fork of the job server shares the server's imports and is not comparable with
    # a process of its own: say which it was.
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss_job_server_fork" if os.environ.get(CHILD_ENV) else
            "process_max_rss"}


# ---------------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------------


def train_run(settings: dict, data_path: str | Path, outputs: RunOutputs, weights_dir: str | Path | None = None,
              threads: int | None = None, chain: ChainStart | None = None, keep_final_state: bool = False) -> dict:
    """Train one run as ``settings`` (cnnrepro.config.run_settings) describe it; write all outputs.

    ``chain``: continue from a shorter run's final state (when no checkpoint of this run exists);
    ``keep_final_state``: leave this run's final state in ``outputs.final_state`` for a longer run.
    """
    ops: set[str] = set()
    with determinism.watch(ops):
        run = set_up(settings, data_path, outputs, weights_dir, threads)
        run.nondeterministic_ops = ops
        run.keep_final_state = keep_final_state
        return train_epochs(run, chain)


def train_epochs(run: Run, chain: ChainStart | None) -> dict:
    """Resume or continue, train until the schedule stops, and write the record."""
    settings = run.settings
    if not resume(run) and chain is not None:
        continue_chain(run, chain)
    # After the checkpoint is loaded, so the features come from the restored backbone.
    run.stage = feature_cache.build_stage(settings, run.model, run.splits, run.speed, run.device, run.eval_batch)
    log.info("feature cache: %s — %s", "on" if run.stage.cached else "off", run.stage.reason)
    log.info("numerics: %s; %s", run.numerics["precision"],
             ", ".join(deviations(run.numerics)) or "no speed switch in effect (as the papers computed)")
    # The compiled module only runs forward passes; state always comes from the plain `model`.
    run.net = torch.compile(run.stage.net) if run.speed["compile"] else run.stage.net
    while not run.stopped:
        train_loss = run_epoch(run)
        if not math.isfinite(train_loss):
            # The job still succeeds, with a record marked diverged, so aggregation and the report complete.
            log.error("run %s DIVERGED: training loss became %s in epoch %d; stopping, metrics marked diverged",
                      settings["run_id"], train_loss, run.epoch)
            return write_diverged(run, train_loss)
    return write_record(run)


def set_up(settings: dict, data_path: str | Path, outputs: RunOutputs, weights_dir, threads: int | None) -> Run:
    """Seed, data, model, optimizer and schedule, in the order that fixes the random streams."""
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(settings["device"])
    deterministic_algorithms(device)
    torch.manual_seed(settings["seed"])
    generator = torch.Generator(device=device)
    generator.manual_seed(settings["seed"])

    splits = build_splits(settings, read_verified(data_path), device, generator)
    model = build_run_model(settings, weights_dir=weights_dir)
    recipe = settings["recipe"]
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    speed = effective_speed(settings["speed"], device.type, any(isinstance(m, nn.Conv2d) for m in model.modules()),
                            capability, recipe["optimizer"])
    set_backend_flags(speed, device)
    numerics = numerics_record(speed, device, device_name(device), capability)
    model = model.to(device, memory_format=torch.channels_last if speed["channels_last"] else torch.preserve_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    sha = data_sha256(data_path)
    optimizer = make_optimizer(trainable, recipe, speed["fused_optimizer"])
    run = Run(settings, outputs, device, generator, splits, model, trainable, optimizer,
              schedules.make_schedule(recipe), make_loss(recipe["loss"], settings["num_classes"]), speed, numerics,
              fingerprint(settings, sha, device), checkpoint.frozen_digest(model), sha, started)
    run.eval_every = effective_eval_every(recipe)
    log.info("run %s on %s (%s): %d train / %d eval / %d test images, %d of %d parameters trainable",
             settings["run_id"], device, device_name(device), len(splits["train"]), len(splits["eval"]),
             len(splits["test"]), sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters()))
    return run


def effective_eval_every(recipe: dict) -> int:
    """Every how many epochs the run evaluates (cnnrepro.engine.evaluation.eval_every); the log says why when it
    is not recipe.eval_every."""
    every, asked = eval_every(recipe), recipe["eval_every"]
    if asked > 1 and every == 1:
        log.info("evaluating every epoch, not every %d (recipe.eval_every): %s", asked,
                 " and ".join(every_epoch_reasons(recipe)))
    elif every > 1:
        log.info("evaluating every %d epochs and after the last (recipe.eval_every); history.csv leaves the eval "
                 "columns of the other epochs empty", every)
    return every


def restore(run: Run, ckpt: dict) -> None:
    """Put a run's saved state (a checkpoint or a final state) back into ``run``."""
    checkpoint.load_state(run.model, ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    checkpoint.set_rng_state(ckpt["rng"], run.generator, run.device)
    run.history, run.best_state, run.best_epoch = ckpt["history"], ckpt["best_state"], ckpt["best_epoch"]
    run.epoch, run.seconds_before = ckpt["epoch"], ckpt["train_seconds"]
    run.continued_from = ckpt["continued_from"]
    run.nondeterministic_ops.update(ckpt.get("nondeterministic_ops", ()))


def resume(run: Run) -> bool:
    """Continue from the run's checkpoint when it was written for exactly this run; whether it did."""
    ckpt = checkpoint.load(run.outputs.checkpoint, run.fingerprint, run.frozen)
    if ckpt is None:
        return False
    restore(run, ckpt)
    run.resumed = True
    log.info("resuming %s from the checkpoint after epoch %d (%.0f s spent so far)", run.settings["run_id"],
             run.epoch, run.seconds_before)
    return True


def continue_chain(run: Run, chain: ChainStart) -> None:
    """Start from the final state of a shorter run of the same settings, as if this run had trained those
    epochs itself: the same weights, optimizer, schedule and RNG streams, so the result equals training from
    scratch bit for bit. Anything wrong with the state (missing, other settings or data, kept no state) is
    logged and the run trains from scratch instead."""
    settings, source = run.settings, chain.settings
    chaining.check_continues(settings, source)
    ckpt, why_not = checkpoint.load_final(chain.state, fingerprint(source, run.data_sha256, run.device), run.frozen)
    if ckpt is None:
        log.warning("not continuing from %s: %s; training %s from scratch", source["run_id"], why_not,
                    settings["run_id"])
        return
    restore(run, ckpt)
    run.continued_from = {"run_id": source["run_id"], "epochs": run.epoch}
    last = run.history[-1]
    if last["stop_reason"] == "max_epochs":
        # The shorter run stopped only at its cap: a longer run goes on from here.
        last["stop"], last["stop_reason"] = False, None
        run.schedule.continue_past_cap()
        if not evaluates(run, run.epoch):
            # The shorter run evaluated its last epoch for its record; this run's own schedule would not have.
            last["eval_loss"] = last["eval_acc"] = None
        action = f"continuing to epoch {run.max_epochs}"
    else:  # it stopped by its own rule (early stopping, ...), as a longer run does at the same epoch
        action = f"which stopped by its schedule ({last['stop_reason']}), as this run does"
    log.info("continuing %s from %s after epoch %d (its final state; %.0f s spent so far), %s",
             settings["run_id"], source["run_id"], run.epoch, run.seconds_before, action)


def evaluates(run: Run, epoch: int) -> bool:
    """Whether ``epoch`` is evaluated: every ``eval_every``-th epoch and the last one (a run that stops earlier by
    its schedule is evaluated where it stops, too: see run_epoch)."""
    return epoch % run.eval_every == 0 or epoch >= run.max_epochs


def run_epoch(run: Run) -> float:
    """Train one epoch, evaluate when due, let the schedule decide, log and checkpoint; return the training loss."""
    run.epoch += 1
    epoch, optimizer = run.epoch, run.optimizer
    lr = optimizer.param_groups[0]["lr"]
    t0 = time.time()
    train_loss, train_acc = train_one_epoch(run.net, run.stage.splits["train"], optimizer, run.criterion,
                                            run.recipe["batch_size"], run.generator, run.recipe["bn_frozen"],
                                            run.stage.channels_last, run.speed["amp_bf16"],
                                            f"epoch {epoch}/{run.max_epochs}", run.recipe["epoch_loss"])
    run.evaluations.clear()  # new weights
    if not math.isfinite(train_loss):
        return train_loss
    # Evaluation draws no random numbers and changes no state, so skipping it leaves the training itself as is.
    ev = evaluate_split(run, "eval") if evaluates(run, epoch) else None
    logs = {"train_loss": train_loss, "train_acc": train_acc}
    if ev is not None:
        logs.update(eval_loss=ev["loss"], eval_acc=ev["acc"])
    decision = run.schedule.end_epoch(epoch, logs)
    if decision.stop and ev is None:  # stopped by its rule between evaluations: the last epoch is always evaluated
        ev = evaluate_split(run, "eval")
    seconds = time.time() - t0
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
           "eval_loss": ev["loss"] if ev else None, "eval_acc": ev["acc"] if ev else None, "lr": lr,
           "epoch_seconds": seconds}
    run.history.append({**row, "stop": decision.stop, "stop_reason": decision.reason})
    if decision.best and run.recipe["select"] == "best":
        run.best_state, run.best_epoch = checkpoint.cpu_copy(checkpoint.mutable_state(run.model)), epoch
    for group in optimizer.param_groups:
        group["lr"] = decision.lr
    remaining = (run.max_epochs - epoch) * (sum(h["epoch_seconds"] for h in run.history) / len(run.history))
    log.info("epoch %d/%s loss %.4f acc %.4f %s lr %.2e %.1fs ETA %s%s",
             epoch, run.max_epochs, train_loss, train_acc,
             f"eval_loss {ev['loss']:.4f} eval_acc {ev['acc']:.4f}" if ev else "(not evaluated)", lr, seconds,
             ("≤" if run.recipe["schedule"] != "constant" else "") + format_eta(remaining),
             f" — stop: {decision.reason}" if decision.stop else "")
    save_checkpoint(run)
    return train_loss


def save_checkpoint(run: Run) -> None:
    checkpoint.save(run.outputs.checkpoint, fingerprint=run.fingerprint, frozen_digest=run.frozen, epoch=run.epoch,
                    model=checkpoint.to_cpu(checkpoint.mutable_state(run.model)),
                    optimizer=run.optimizer.state_dict(), schedule=run.schedule.state_dict(),
                    rng=checkpoint.rng_state(run.generator, run.device), history=run.history,
                    best_state=run.best_state, best_epoch=run.best_epoch, train_seconds=run.train_seconds(),
                    continued_from=run.continued_from, nondeterministic_ops=sorted(run.nondeterministic_ops))


def evaluate_split(run: Run, split_name: str) -> dict:
    """Loss, accuracy and the detailed metrics of the current weights on a split, computed once per weights."""
    split = run.stage.splits[split_name]
    if id(split) not in run.evaluations:
        run.evaluations[id(split)] = evaluate(run.net, split, run.criterion, run.eval_batch,
                                              run.settings["num_classes"], run.stage.channels_last, True,
                                              run.speed["amp_bf16"])
    return run.evaluations[id(split)]


# ---------------------------------------------------------------------------------------------------------------------
# one epoch, evaluation
# ---------------------------------------------------------------------------------------------------------------------


class OutOfMemory(RuntimeError):
    """A batch did not fit; the message names the batch size and the setting that changes it."""


@contextlib.contextmanager
def explain_out_of_memory(batch_size: int, setting: str, device: torch.device):
    """Turn an allocation failure inside a batch loop into an error that says what to change."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        text = str(error)
        if not isinstance(error, (torch.OutOfMemoryError, MemoryError)) and \
                "can't allocate memory" not in text and "out of memory" not in text:
            raise
        raise OutOfMemory(f"out of {'GPU' if device.type == 'cuda' else 'host'} memory with batches of {batch_size} "
                          f"({type(error).__name__}: {text.splitlines()[0] if text else 'no details'}). Lower "
                          f"{setting} in the study's recipe (a --configfile overlay), or run on a device with more "
                          "memory.") from error


def train_one_epoch(model, split: Split, optimizer, criterion, batch_size: int, generator, bn_frozen: str,
                    channels_last: bool, amp: bool = False, desc: str = "train",
                    epoch_loss: str = "batch_mean") -> tuple[float, float]:
    """One pass over ``split``; returns (epoch loss, accuracy). The epoch loss is the plain mean of the batch
    losses (``batch_mean``, what seed 002's plateau rule reads) or each batch weighted by its size
    (``sample_mean``, what Keras logs: they differ when the last batch is smaller).

    A step costs what the model costs: nothing is entered or allocated per step beyond the forward, backward and
    optimizer step but an argmax, a comparison and a copy of the loss into buffers allocated before the epoch (small
    tensors kept from every step would pin the host allocator's heap under each batch's large ones); the losses are
    summed once after the epoch."""
    model.train()
    models.set_bn_mode(model, bn_frozen)
    device = split.device
    steps = math.ceil(len(split) / batch_size)
    losses = torch.zeros(steps, device=device)
    hits = torch.zeros(len(split), dtype=torch.bool, device=device)
    sizes: list[int] = []
    bar = ProgressBar(steps, desc)
    progress_loss = (lambda: float(losses[:len(sizes)].mean())) if bar.enabled else None
    # bf16 autocast only when asked: a disabled torch.autocast still costs a context per step.
    precision = (lambda: autocast(device, True)) if amp else contextlib.nullcontext
    with explain_out_of_memory(batch_size, "recipe.batch_size", device):
        for step, (x, y) in enumerate(split.batches(batch_size, generator, train=True)):
            with precision():
                logits = model(to_format(x, channels_last))
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
            seen = step * batch_size
            torch.eq(logits.detach().argmax(1), y, out=hits[seen:seen + len(y)])
            sizes.append(len(y))
            bar.update(len(sizes), progress_loss)
    bar.close()
    if not sizes:
        return 0.0, 0.0
    return epoch_mean(losses, sizes, epoch_loss == "sample_mean"), int(hits.sum()) / len(split)


def epoch_mean(losses: torch.Tensor, sizes: list[int], weighted: bool) -> float:
    """The batch losses' mean (weighted by batch size when ``weighted``), summed one batch after another in the
    losses' precision: the number a running on-device sum gives, bit for bit."""
    if weighted:
        losses = losses * torch.tensor(sizes, device=losses.device)
    running = np.add.accumulate(losses.float().cpu().numpy())
    return float(running[-1]) / (sum(sizes) if weighted else len(sizes))


@torch.no_grad()
def evaluate(model, split: Split, criterion, batch_size: int, num_classes: int, channels_last: bool,
             detailed: bool = False, amp: bool = False) -> dict:
    model.eval()
    device = split.device
    # Sums stay on the device (float64: the same sums Python floats gave), so a GPU syncs once, not per batch.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    # Allocated once: a small tensor kept from every batch would pin the host allocator's heap (train_one_epoch).
    pred = torch.empty(len(split), dtype=torch.long, device=device)
    seen = 0
    for x, y in split.batches(batch_size, None, train=False):
        with explain_out_of_memory(batch_size, "recipe.eval_batch_size", device), autocast(device, amp):
            logits = model(to_format(x, channels_last))
        logits = logits.float()
        total_loss += criterion(logits, y).double() * len(y)
        torch.argmax(logits, 1, out=pred[seen:seen + len(y)])
        seen += len(y)
        if num_classes > 5:
            top5 += metrics.topk_hits(logits, y, 5)
    out = {"loss": float(total_loss) / max(seen, 1), "acc": float((pred == split.y).float().mean())}
    if detailed:
        hits = {5: int(top5)} if num_classes > 5 else {}
        out.update(metrics.classification_metrics(split.y, pred, num_classes, hits))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------------------------------


def _write_history(path: Path, history: list[dict]) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        # An epoch that was not evaluated (recipe.eval_every) has None: an empty cell, which pandas reads as NaN.
        writer.writerows({k: h[k] for k in HISTORY_FIELDS} for h in history)


def write_record(run: Run) -> dict:
    """Evaluate the selected weights, write weights, history and metrics, and drop the checkpoint (or leave it
    as the final state a longer run continues from)."""
    settings, recipe, epoch = run.settings, run.recipe, run.epoch
    t0 = time.time()
    if run.keep_final_state and not run.outputs.checkpoint.exists():
        save_checkpoint(run)  # a run continued from a finished one trained no epoch of its own
    # The last epoch's evaluation is reused: with eval_split test, "eval" and "test" are one split.
    last = evaluate_split(run, "test")
    last_eval = evaluate_split(run, "eval")
    selected_epoch = epoch
    if recipe["select"] == "best" and run.best_state is not None and run.best_epoch != epoch:
        # The trained suffix shares its parameters with `model`, so this also updates a cached stage.
        checkpoint.load_state(run.model, run.best_state)
        run.evaluations.clear()
        selected_epoch = run.best_epoch
    test = evaluate_split(run, "test")
    final_eval = evaluate_split(run, "eval")
    io.torch_save(checkpoint.to_cpu(run.model.state_dict()), run.outputs.weights)
    _write_history(run.outputs.history, run.history)
    history = run.history
    record = {
        "status": "ok",
        "run_id": settings["run_id"],
        "settings": settings,
        "selected": recipe["select"],
        "selected_epoch": selected_epoch,
        "epochs_run": epoch,
        "stop_reason": history[-1]["stop_reason"],
        "test": test,
        "eval": {"split": settings["eval_split"], "loss": final_eval["loss"], "acc": final_eval["acc"]},
        "last_epoch": {"test_top1": last["top1"], "test_loss": last["loss"], "eval_loss": last_eval["loss"],
                       "eval_acc": last_eval["acc"]},
        "train_loss_first": history[0]["train_loss"],
        "train_loss_last": history[-1]["train_loss"],
        "train_acc_last": history[-1]["train_acc"],
        "train_seconds": run.train_seconds(),
        "resumed": run.resumed,
        # With chaining, train_seconds includes the shorter runs' epochs this run continued from.
        "continued_from": run.continued_from,
        "eval_every": run.eval_every,
        "params_total": sum(p.numel() for p in run.model.parameters()),
        "params_trainable": sum(p.numel() for p in run.trainable),
        "pretrained_weights": (models.weights_name(settings["model"], settings["model_options"])
                               if settings["pretrained"] else None),
        "schedule": run.schedule.describe(),
        "speed": _speed_record(run),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "device": str(run.device),
        "device_name": run.numerics["device_name"],
        "threads": torch.get_num_threads(),
        "data_sha256": run.data_sha256,
        "host": os.uname().nodename,
        **peak_memory_bytes(run.device),
    }
    io.write_json(run.outputs.metrics, record)
    leave_final_state(run, None if run.keep_final_state else "no run continues from this one")
    log.info("done %s: test top-1 %.4f, macro F1 %.4f, %.0f s (%.1f s after the last epoch)", settings["run_id"],
             test["top1"], test["macro_f1"], record["train_seconds"], time.time() - t0)
    return record


def leave_final_state(run: Run, not_kept: str | None) -> None:
    """The last checkpoint becomes the final state a longer run continues from (a rename, no copy), or a small
    placeholder saying why none is kept; either way the checkpoint is gone afterwards."""
    final = run.outputs.final_state
    if final is not None:
        if not_kept is None and run.outputs.checkpoint.exists():
            checkpoint.promote_to_final(run.outputs.checkpoint, final)
        else:
            checkpoint.save_final_placeholder(final, not_kept or "the run ended without a checkpoint")
    run.outputs.checkpoint.unlink(missing_ok=True)


def _speed_record(run: Run) -> dict:
    return {**run.speed, "feature_cache": run.stage.cached, "feature_cache_reason": run.stage.reason,
            "numerics": {**run.numerics, "nondeterministic_ops": sorted(run.nondeterministic_ops)},
            "deviations": deviations(run.numerics)}


def write_diverged(run: Run, loss: float) -> dict:
    """Leave a metrics record that says the run diverged, so aggregation and the report still complete."""
    record = {
        "status": "diverged", "run_id": run.settings["run_id"], "settings": run.settings,
        "diverged_epoch": run.epoch, "diverged_loss": str(loss), "epochs_run": run.epoch - 1,
        "train_seconds": run.train_seconds(), "torch_version": torch.__version__, "device": str(run.device),
        "device_name": device_name(run.device), "speed": _speed_record(run)}
    io.torch_save(checkpoint.to_cpu(run.model.state_dict()), run.outputs.weights)
    _write_history(run.outputs.history, run.history)
    io.write_json(run.outputs.metrics, record)
    # A longer run of the same settings diverges at the same epoch: it trains from scratch to find that out.
    leave_final_state(run, f"the run diverged in epoch {run.epoch}")
    return record
