"""The training engine: one run from a compact dataset file to weights, history and metrics.

``train_run`` reads top to bottom: set up (seed, data, model, optimizer, schedule) → resume from the
checkpoint → the epoch loop → the record. The whole split lives on the training device as one uint8
tensor (cnnrepro.splits); a checkpoint is written atomically after every epoch (cnnrepro.checkpoint),
so a killed job rerun continues where it stopped; when only the head trains over a fixed backbone the
loop runs on cached features (cnnrepro.feature_cache).
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

import torch
from torch import nn

from cnnrepro import checkpoint, feature_cache, io, metrics, models, schedules
from cnnrepro.device import device_name, pick_device
from cnnrepro.progress import ProgressBar, format_eta
from cnnrepro.recipe import (autocast, build_run_model, deviations, effective_speed, make_loss, make_optimizer,
                             numerics_record, to_format)
from cnnrepro.splits import Split, build_splits, read_verified

log = logging.getLogger("cnnrepro.train")

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "epoch_seconds"]


@dataclass
class RunOutputs:
    weights: Path
    history: Path
    metrics: Path
    checkpoint: Path  # not a Snakemake output: Snakemake would delete it when a job fails

    def __post_init__(self):
        for name in ("weights", "history", "metrics", "checkpoint"):
            setattr(self, name, Path(getattr(self, name)))


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

    @property
    def recipe(self) -> dict:
        return self.settings["recipe"]

    @property
    def eval_batch(self) -> int:
        return self.recipe["eval_batch_size"] or max(self.recipe["batch_size"], 256)

    @property
    def max_epochs(self) -> int:
        return self.schedule.length

    def train_seconds(self) -> float:
        """Wall time spent on this run so far, across resumes."""
        return self.seconds_before + time.time() - self.started

    @property
    def stopped(self) -> bool:
        return bool(self.history) and self.history[-1]["stop"]


def data_sha256(data_path: str | Path) -> str | None:
    sidecar = Path(f"{data_path}.json")
    return io.read_json(sidecar).get("sha256") if sidecar.exists() else None


def peak_memory_bytes(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_max_allocated"}
    # ru_maxrss is KiB on Linux.
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss"}


# ---------------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------------


def train_run(settings: dict, data_path: str | Path, outputs: RunOutputs, weights_dir: str | Path | None = None,
              threads: int | None = None) -> dict:
    """Train one run as ``settings`` (cnnrepro.config.run_settings) describe it; write all outputs."""
    run = set_up(settings, data_path, outputs, weights_dir, threads)
    resume(run)
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
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(settings["seed"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator(device=device)
    generator.manual_seed(settings["seed"])

    splits = build_splits(settings, read_verified(data_path), device, generator)
    model = build_run_model(settings, weights_dir=weights_dir)
    recipe = settings["recipe"]
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    speed = effective_speed(settings["speed"], device.type, any(isinstance(m, nn.Conv2d) for m in model.modules()),
                            capability)
    if device.type == "cuda":
        # Set both ways: torch's own default allows TF32 in cuDNN convolutions, which the papers' fp32 did not use.
        torch.backends.cudnn.benchmark = speed["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = speed["tf32"]
    numerics = numerics_record(speed, device, device_name(device), capability)
    model = model.to(device, memory_format=torch.channels_last if speed["channels_last"] else torch.preserve_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    sha = data_sha256(data_path)
    run = Run(settings, outputs, device, generator, splits, model, trainable, make_optimizer(trainable, recipe),
              schedules.make_schedule(recipe), make_loss(recipe["loss"], settings["num_classes"]), speed, numerics,
              # The data's sha256 and the device type too: a rebuilt dataset must not continue an old run, nor
              # a GPU run a CPU checkpoint (its RNG state does not fit); the speed switches are in the settings.
              checkpoint.settings_hash({"settings": settings, "data_sha256": sha, "device": device.type}),
              checkpoint.frozen_digest(model),
              sha, started)
    log.info("run %s on %s (%s): %d train / %d eval / %d test images, %d of %d parameters trainable",
             settings["run_id"], device, device_name(device), len(splits["train"]), len(splits["eval"]),
             len(splits["test"]), sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters()))
    return run


def resume(run: Run) -> None:
    """Continue from the run's checkpoint when it was written for exactly this run."""
    ckpt = checkpoint.load(run.outputs.checkpoint, run.fingerprint, run.frozen)
    if ckpt is None:
        return
    checkpoint.load_state(run.model, ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    checkpoint.set_rng_state(ckpt["rng"], run.generator, run.device)
    run.history, run.best_state, run.best_epoch = ckpt["history"], ckpt["best_state"], ckpt["best_epoch"]
    run.epoch, run.seconds_before = ckpt["epoch"], ckpt["train_seconds"]
    log.info("resuming %s from the checkpoint after epoch %d (%.0f s spent so far)", run.settings["run_id"],
             run.epoch, run.seconds_before)


def run_epoch(run: Run) -> float:
    """Train one epoch, evaluate, let the schedule decide, log and checkpoint; return the training loss."""
    run.epoch += 1
    epoch, optimizer = run.epoch, run.optimizer
    lr = optimizer.param_groups[0]["lr"]
    t0 = time.time()
    train_loss, train_acc = train_one_epoch(run.net, run.stage.splits["train"], optimizer, run.criterion,
                                            run.recipe["batch_size"], run.generator, run.recipe["bn_frozen"],
                                            run.stage.channels_last, run.speed["amp_bf16"],
                                            f"epoch {epoch}/{run.max_epochs}", run.recipe["epoch_loss"])
    if not math.isfinite(train_loss):
        return train_loss
    ev = evaluate_split(run, "eval")
    seconds = time.time() - t0
    decision = run.schedule.end_epoch(epoch, {"train_loss": train_loss, "train_acc": train_acc,
                                              "eval_loss": ev["loss"], "eval_acc": ev["acc"]})
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "eval_loss": ev["loss"],
           "eval_acc": ev["acc"], "lr": lr, "epoch_seconds": seconds}
    run.history.append({**row, "stop": decision.stop, "stop_reason": decision.reason})
    if decision.best:
        run.best_state, run.best_epoch = checkpoint.mutable_state(run.model, clone=True), epoch
    for group in optimizer.param_groups:
        group["lr"] = decision.lr
    remaining = (run.max_epochs - epoch) * (sum(h["epoch_seconds"] for h in run.history) / len(run.history))
    log.info("epoch %d/%s loss %.4f acc %.4f eval_loss %.4f eval_acc %.4f lr %.2e %.1fs ETA %s%s",
             epoch, run.max_epochs, train_loss, train_acc, ev["loss"], ev["acc"], lr, seconds,
             ("≤" if run.recipe["schedule"] != "constant" else "") + format_eta(remaining),
             f" — stop: {decision.reason}" if decision.stop else "")
    checkpoint.save(run.outputs.checkpoint, fingerprint=run.fingerprint, frozen_digest=run.frozen, epoch=epoch,
                    model=checkpoint.to_cpu(checkpoint.mutable_state(run.model)), optimizer=optimizer.state_dict(),
                    schedule=run.schedule.state_dict(), rng=checkpoint.rng_state(run.generator, run.device),
                    history=run.history,
                    best_state=run.best_state, best_epoch=run.best_epoch, train_seconds=run.train_seconds())
    return train_loss


def evaluate_split(run: Run, split_name: str, detailed: bool = False) -> dict:
    return evaluate(run.net, run.stage.splits[split_name], run.criterion, run.eval_batch, run.settings["num_classes"],
                    run.stage.channels_last, detailed, run.speed["amp_bf16"])


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
    (``sample_mean``, what Keras logs: they differ when the last batch is smaller)."""
    model.train()
    models.set_bn_mode(model, bn_frozen)
    device = split.x.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batches = seen = 0
    weighted = epoch_loss == "sample_mean"
    bar = ProgressBar(math.ceil(len(split) / batch_size), desc)
    for x, y in split.batches(batch_size, generator, train=True):
        with explain_out_of_memory(batch_size, "recipe.batch_size", device):
            with autocast(device, amp):
                logits = model(to_format(x, channels_last))
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y) if weighted else loss.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        batches += 1
        seen += len(y)
        bar.update(batches, lambda: float(total_loss) / (seen if weighted else batches))
    bar.close()
    return float(total_loss) / max(seen if weighted else batches, 1), float(correct) / max(len(split), 1)


@torch.no_grad()
def evaluate(model, split: Split, criterion, batch_size: int, num_classes: int, channels_last: bool,
             detailed: bool = False, amp: bool = False) -> dict:
    model.eval()
    device = split.x.device
    # Sums stay on the device (float64: the same sums Python floats gave), so a GPU syncs once, not per batch.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    preds, seen = [], 0
    for x, y in split.batches(batch_size, None, train=False):
        with explain_out_of_memory(batch_size, "recipe.eval_batch_size", device), autocast(device, amp):
            logits = model(to_format(x, channels_last))
        logits = logits.float()
        total_loss += criterion(logits, y).double() * len(y)
        seen += len(y)
        preds.append(logits.argmax(1))
        if num_classes > 5:
            top5 += metrics.topk_hits(logits, y, 5)
    pred = torch.cat(preds)
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
        writer.writerows({k: h[k] for k in HISTORY_FIELDS} for h in history)


def write_record(run: Run) -> dict:
    """Evaluate the selected weights, write weights, history and metrics, and drop the checkpoint."""
    settings, recipe, epoch = run.settings, run.recipe, run.epoch
    last = evaluate_split(run, "test", True)
    last_eval = evaluate_split(run, "eval")
    selected_epoch = epoch
    if recipe["select"] == "best" and run.best_state is not None:
        # The head module shares its parameters with `model`, so this also updates a cached stage.
        checkpoint.load_state(run.model, run.best_state)
        selected_epoch = run.best_epoch
    test = last if selected_epoch == epoch else evaluate_split(run, "test", True)
    final_eval = last_eval if selected_epoch == epoch else evaluate_split(run, "eval")
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
        "resumed": run.seconds_before > 0,
        "params_total": sum(p.numel() for p in run.model.parameters()),
        "params_trainable": sum(p.numel() for p in run.trainable),
        "pretrained_weights": models.get_spec(settings["model"]).pretrained_weights if settings["pretrained"] else None,
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
    run.outputs.checkpoint.unlink(missing_ok=True)
    log.info("done %s: test top-1 %.4f, macro F1 %.4f, %.0f s", settings["run_id"], test["top1"],
             test["macro_f1"], record["train_seconds"])
    return record


def _speed_record(run: Run) -> dict:
    return {**run.speed, "feature_cache": run.stage.cached, "feature_cache_reason": run.stage.reason,
            "numerics": run.numerics, "deviations": deviations(run.numerics)}


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
    run.outputs.checkpoint.unlink(missing_ok=True)
    return record
