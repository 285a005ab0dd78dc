"""The training engine: one run from a compact dataset file to weights, history and metrics.

The whole split lives on the training device as one uint8 tensor; batches are indexed,
converted and augmented there (cnnrepro.augment). A checkpoint is written atomically after
every epoch, so a killed job rerun continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnrepro import augment, datasets, io, metrics, models, schedules

log = logging.getLogger("cnnrepro.train")

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "epoch_seconds"]
CHECKPOINT_VERSION = 1


@dataclass
class RunOutputs:
    weights: Path
    history: Path
    metrics: Path
    checkpoint: Path


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available; set device: auto or cpu")
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def data_sha256(data_path: str | Path) -> str | None:
    sidecar = Path(f"{data_path}.json")
    return io.read_json(sidecar).get("sha256") if sidecar.exists() else None


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def make_optimizer(params, recipe: dict) -> torch.optim.Optimizer:
    name, lr = recipe.get("optimizer", "sgd"), recipe["lr"]
    wd = recipe.get("weight_decay", 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.get("momentum", 0.0), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(recipe.get("betas", (0.9, 0.999))),
                                eps=recipe.get("eps", 1e-8), weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, eps=recipe.get("eps", 1e-8), weight_decay=wd)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=recipe.get("rho", 0.9), eps=recipe.get("eps", 1e-6),
                                    weight_decay=wd)
    raise ValueError(f"unknown optimizer '{name}'; valid: sgd, adam, rmsprop, adadelta")


def loss_fn(name: str, num_classes: int):
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y)
    if name == "mse":
        # Keras 'mean_squared_error' between the softmax output and the one-hot target (seed 004).
        return lambda logits, y: F.mse_loss(logits.softmax(1), F.one_hot(y, num_classes).to(logits.dtype))
    raise ValueError(f"unknown loss '{name}'; valid: ce, mse")


def peak_memory_bytes(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_max_allocated"}
    # ru_maxrss is KiB on Linux.
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss"}


class Split:
    """One split on the device: uint8 images, labels, and the batch transform that feeds the model."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform, device: torch.device):
        self.x = x.to(device)
        self.y = y.to(device)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, generator: torch.Generator | None, train: bool):
        n = len(self)
        order = (torch.randperm(n, generator=generator, device=self.x.device) if train
                 else torch.arange(n, device=self.x.device))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.transform(self.x[idx], generator, train), self.y[idx]


def build_splits(settings: dict, data: dict, device: torch.device, generator: torch.Generator) -> dict:
    """train / eval / test splits as the study defines them (validation split or test-as-validation)."""
    train_x, train_y = data["splits"]["train"]["x"], data["splits"]["train"]["y"]
    test_x, test_y = data["splits"]["test"]["x"], data["splits"]["test"]["y"]
    spec = {"rgb": settings["input"]["rgb"], "input_size": settings["input"]["size"],
            "augment": settings["augment"], "mean": settings["input"]["mean"], "std": settings["input"]["std"]}
    transform = augment.build_batch_transform(spec, device)
    val = None
    if settings["eval_split"] == "val":
        train_idx, val_idx = datasets.stratified_split(train_y, settings["val_fraction"], settings["seed"])
        val = (train_x[val_idx], train_y[val_idx])
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    if settings["augment"] == "kmnist10x":
        # Seed 003: a fixed augmented set, generated once, replaces the originals.
        train_x, train_y = augment.augment_copies(train_x.to(device), train_y.to(device),
                                                  settings["augment_copies"], generator)
    splits = {"train": Split(train_x, train_y, transform, device),
              "test": Split(test_x, test_y, transform, device)}
    splits["eval"] = Split(*val, transform, device) if val is not None else splits["test"]
    return splits


def train_one_epoch(model, split: Split, optimizer, criterion, batch_size: int, generator, bn_frozen: str,
                    channels_last: bool) -> tuple[float, float]:
    model.train()
    models.set_bn_mode(model, bn_frozen)
    total_loss = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device, dtype=torch.long)
    batches = 0
    for x, y in split.batches(batch_size, generator, train=True):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        batches += 1
    # Mean of the per-batch losses: what Keras logs and what seed 002's plateau rule reads.
    return float(total_loss) / max(batches, 1), float(correct) / max(len(split), 1)


@torch.no_grad()
def evaluate(model, split: Split, criterion, batch_size: int, num_classes: int, channels_last: bool,
             detailed: bool = False) -> dict:
    model.eval()
    total_loss, seen = 0.0, 0
    preds, top5 = [], 0
    for x, y in split.batches(batch_size, None, train=False):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        total_loss += float(criterion(logits, y)) * len(y)
        seen += len(y)
        preds.append(logits.argmax(1))
        if num_classes > 5:
            top5 += metrics.topk_hits(logits, y, 5)
    pred = torch.cat(preds)
    out = {"loss": total_loss / max(seen, 1), "acc": float((pred == split.y).float().mean())}
    if detailed:
        hits = {5: top5} if num_classes > 5 else {}
        out.update(metrics.classification_metrics(split.y, pred, num_classes, hits))
    return out


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _write_history(path: Path, history: list[dict]) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def train_run(settings: dict, data_path: str | Path, outputs: RunOutputs, weights_dir: str | Path | None = None,
              threads: int | None = None) -> dict:
    """Train one run as ``settings`` (cnnrepro.config.run_settings) describe it; write all outputs."""
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(settings["device"])
    recipe = settings["recipe"]
    seed = settings["seed"]
    torch.manual_seed(seed)
    if hasattr(torch, "use_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    data = datasets.read_compact(data_path)
    splits = build_splits(settings, data, device, generator)
    model = models.build_model(settings["model"], settings["num_classes"], in_channels=settings["in_channels"],
                               input_size=settings["input"]["size"], pretrained=settings["pretrained"],
                               weights_dir=weights_dir)
    models.apply_freeze(model, settings["model"], settings["trainable"])
    channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, recipe)
    schedule = schedules.make_schedule(recipe)
    criterion = loss_fn(recipe.get("loss", "ce"), settings["num_classes"])
    batch_size = recipe["batch_size"]
    eval_batch = recipe.get("eval_batch_size", max(batch_size, 256))
    max_epochs = recipe.get("max_epochs", recipe.get("epochs"))

    fingerprint = settings_hash(settings)
    history: list[dict] = []
    best_state, best_epoch = None, None
    start_epoch = 1
    if outputs.checkpoint.exists():
        ckpt = torch.load(outputs.checkpoint, map_location=device, weights_only=False)
        if ckpt.get("fingerprint") == fingerprint and ckpt.get("version") == CHECKPOINT_VERSION:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            schedule.load_state_dict(ckpt["schedule"])
            _set_rng_state(ckpt["rng"], generator)
            history, best_state, best_epoch = ckpt["history"], ckpt["best_state"], ckpt["best_epoch"]
            start_epoch = ckpt["epoch"] + 1
            log.info("resuming %s from the checkpoint after epoch %d", settings["run_id"], ckpt["epoch"])
        else:
            log.warning("ignoring checkpoint %s: it was written for other settings", outputs.checkpoint)

    log.info("run %s on %s (%s): %d train / %d eval / %d test images, %d of %d parameters trainable",
             settings["run_id"], device, device_name(device), len(splits["train"]), len(splits["eval"]),
             len(splits["test"]), sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters()))
    stop = bool(history) and history[-1].get("stop", False)
    epoch = start_epoch - 1
    while not stop:
        epoch += 1
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.time()
        train_loss, train_acc = train_one_epoch(model, splits["train"], optimizer, criterion, batch_size, generator,
                                                recipe.get("bn_frozen", "train"), channels_last)
        if not math.isfinite(train_loss):
            # The job still succeeds, with a record marked diverged, so aggregation and the report complete.
            log.error("run %s DIVERGED: training loss became %s in epoch %d; stopping, metrics marked diverged",
                      settings["run_id"], train_loss, epoch)
            return _write_diverged(model, outputs, settings, history, epoch, train_loss, started, device)
        ev = evaluate(model, splits["eval"], criterion, eval_batch, settings["num_classes"], channels_last)
        seconds = time.time() - t0
        decision = schedule.end_epoch(epoch, {"train_loss": train_loss, "train_acc": train_acc,
                                              "eval_loss": ev["loss"], "eval_acc": ev["acc"]})
        stop = decision.stop
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "eval_loss": ev["loss"],
               "eval_acc": ev["acc"], "lr": lr, "epoch_seconds": seconds}
        history.append({**row, "stop": stop, "stop_reason": decision.reason})
        if decision.best:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_epoch = epoch
        for group in optimizer.param_groups:
            group["lr"] = decision.lr
        remaining = (max_epochs - epoch) * (sum(h["epoch_seconds"] for h in history) / len(history))
        log.info("epoch %d/%s loss %.4f acc %.4f eval_loss %.4f eval_acc %.4f lr %.2e %.1fs ETA %s%s",
                 epoch, max_epochs, train_loss, train_acc, ev["loss"], ev["acc"], lr, seconds,
                 ("≤" if recipe.get("schedule") != "constant" else "") + _format_eta(remaining),
                 f" — stop: {decision.reason}" if stop else "")
        io.torch_save({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "epoch": epoch,
                       "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "schedule": schedule.state_dict(), "rng": _rng_state(generator), "history": history,
                       "best_state": best_state, "best_epoch": best_epoch}, outputs.checkpoint)

    last = evaluate(model, splits["test"], criterion, eval_batch, settings["num_classes"], channels_last, True)
    last_eval = evaluate(model, splits["eval"], criterion, eval_batch, settings["num_classes"], channels_last)
    selected_epoch = epoch
    if recipe.get("select", "last") == "best" and best_state is not None:
        model.load_state_dict(best_state)
        selected_epoch = best_epoch
    test = (last if selected_epoch == epoch else
            evaluate(model, splits["test"], criterion, eval_batch, settings["num_classes"], channels_last, True))
    final_eval = (last_eval if selected_epoch == epoch else
                  evaluate(model, splits["eval"], criterion, eval_batch, settings["num_classes"], channels_last))
    io.torch_save(model.state_dict(), outputs.weights)
    _write_history(outputs.history, [{k: h[k] for k in HISTORY_FIELDS} for h in history])
    record = {
        "status": "ok",
        "run_id": settings["run_id"],
        "settings": settings,
        "selected": recipe.get("select", "last"),
        "selected_epoch": selected_epoch,
        "epochs_run": epoch,
        "stop_reason": history[-1].get("stop_reason"),
        "test": test,
        "eval": {"split": settings["eval_split"], "loss": final_eval["loss"], "acc": final_eval["acc"]},
        "last_epoch": {"test_top1": last["top1"], "test_loss": last["loss"], "eval_loss": last_eval["loss"],
                       "eval_acc": last_eval["acc"]},
        "train_loss_first": history[0]["train_loss"],
        "train_loss_last": history[-1]["train_loss"],
        "train_acc_last": history[-1]["train_acc"],
        "train_seconds": time.time() - started,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable),
        "pretrained_weights": models.get_spec(settings["model"]).pretrained_weights if settings["pretrained"] else None,
        "schedule": schedule.describe(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "data_sha256": data_sha256(data_path),
        "host": os.uname().nodename,
        **peak_memory_bytes(device),
    }
    io.write_json(outputs.metrics, record)
    outputs.checkpoint.unlink(missing_ok=True)
    log.info("done %s: test top-1 %.4f, macro F1 %.4f, %.0f s", settings["run_id"], test["top1"],
             test["macro_f1"], record["train_seconds"])
    return record


def _write_diverged(model, outputs: RunOutputs, settings: dict, history: list, epoch: int, loss: float,
                    started: float, device: torch.device) -> dict:
    """Leave a metrics record that says the run diverged, so aggregation and the report still complete."""
    record = {
        "status": "diverged", "run_id": settings["run_id"], "settings": settings,
        "diverged_epoch": epoch, "diverged_loss": str(loss), "epochs_run": epoch - 1,
        "train_seconds": time.time() - started, "torch_version": torch.__version__, "device": str(device),
        "device_name": device_name(device)}
    io.torch_save(model.state_dict(), outputs.weights)
    _write_history(outputs.history, [{k: h[k] for k in HISTORY_FIELDS} for h in history])
    io.write_json(outputs.metrics, record)
    outputs.checkpoint.unlink(missing_ok=True)
    return record
