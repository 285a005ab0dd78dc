"""The training engine: one run from a compact dataset file to weights, history and metrics.

The whole split lives on the training device as one uint8 tensor; batches are indexed,
converted and augmented there (cnnrepro.augment). A checkpoint is written atomically after
every epoch, so a killed job rerun continues where it stopped.

Two things can replace what the epoch loop sees without changing the loop itself:

* feature caching: when only the head trains over a backbone that computes the same function in
  every epoch, the backbone's features are computed once and the loop trains the head on them
  (a :class:`Stage` of head module + feature splits instead of full model + image splits);
* speed switches (:func:`effective_speed`): channels_last, bf16 autocast and cudnn.benchmark on
  CUDA, torch.compile. On CPU only channels_last and compile can be active.
"""

from __future__ import annotations

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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from cnnrepro import augment, datasets, io, metrics, models, schedules

log = logging.getLogger("cnnrepro.train")

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "epoch_seconds"]
# 2: checkpoints hold only the state training can change, plus a digest of the frozen rest.
CHECKPOINT_VERSION = 2

# Recipe switches for speed and their defaults (also documented in the schema's recipe block).
SPEED_DEFAULTS = {"channels_last": True, "amp_bf16": True, "cudnn_benchmark": True, "compile": False}

# Cached features must fit comfortably: at most this much, and at most half of the free memory.
FEATURE_CACHE_MAX_BYTES = 4 * 2**30


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


# ---------------------------------------------------------------------------------------------------------------------
# speed switches
# ---------------------------------------------------------------------------------------------------------------------


def effective_speed(recipe: dict, device_type: str, has_conv: bool, bf16_supported: bool = True) -> dict:
    """The speed switches a run actually uses, from the recipe's requests and the device.

    Kept free of device queries so the CUDA decisions can be tested on a CPU-only machine.
    bf16 autocast and cudnn.benchmark exist only on CUDA, so on CPU the numbers do not change.
    """
    requested = {key: bool(recipe.get(key, default)) for key, default in SPEED_DEFAULTS.items()}
    cuda = device_type == "cuda"
    return {
        "channels_last": requested["channels_last"] and has_conv,
        "amp_bf16": requested["amp_bf16"] and cuda and bf16_supported,
        "cudnn_benchmark": requested["cudnn_benchmark"] and cuda,
        "compile": requested["compile"],
        "requested": requested,
    }


def _autocast(device: torch.device, enabled: bool):
    # enabled=False is a true no-op, so the CPU path runs exactly as without the switch.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _to_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


# ---------------------------------------------------------------------------------------------------------------------
# data on the device
# ---------------------------------------------------------------------------------------------------------------------


class Split:
    """One split on the device: uint8 images (or cached features), labels, and the batch transform."""

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


def _identity(x: torch.Tensor, generator=None, train: bool = False) -> torch.Tensor:
    return x


def batch_transform(settings: dict, device: torch.device, augment_name: str | None = None):
    """The run's on-device batch transform (input adaptation, augmentation, normalisation)."""
    inp = settings["input"]
    spec = {"rgb": inp["rgb"], "input_size": inp["size"], "augment": augment_name or settings["augment"],
            "mean": inp["mean"], "std": inp["std"]}
    return augment.build_batch_transform(spec, device)


def build_run_model(settings: dict, pretrained: bool | None = None, weights_dir: str | Path | None = None) -> nn.Module:
    """The run's model with its freeze level applied (``pretrained`` overrides the settings)."""
    model = models.build_model(settings["model"], settings["num_classes"], in_channels=settings["in_channels"],
                               input_size=settings["input"]["size"],
                               pretrained=settings["pretrained"] if pretrained is None else pretrained,
                               weights_dir=weights_dir)
    models.apply_freeze(model, settings["model"], settings["trainable"])
    return model


def build_splits(settings: dict, data: dict, device: torch.device, generator: torch.Generator) -> dict:
    """train / eval / test splits as the study defines them (validation split or test-as-validation)."""
    train_x, train_y = data["splits"]["train"]["x"], data["splits"]["train"]["y"]
    test_x, test_y = data["splits"]["test"]["x"], data["splits"]["test"]["y"]
    transform = batch_transform(settings, device)
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


# ---------------------------------------------------------------------------------------------------------------------
# feature caching
# ---------------------------------------------------------------------------------------------------------------------


def _tv_resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchvision ResNet.forward up to avgpool + flatten; fc is the head.
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(m.avgpool(x), 1)


def _tv_squeezenet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.features(x)


def _tv_squeezenet_head(m: nn.Module) -> nn.Module:
    # Dropout -> conv10 -> ReLU -> pool, then SqueezeNet.forward's flatten. The dropout stays in the
    # head, so it draws from the same global RNG stream on the cached features as on the full model.
    return nn.Sequential(m.classifier, nn.Flatten(1))


# model name -> (features(model, x), head(model)); model(x) == head(features(x)) holds exactly.
FEATURE_SPLITS: dict[str, tuple[Callable, Callable]] = {
    "resnet18": (_tv_resnet_features, lambda m: m.fc),
    "resnet34": (_tv_resnet_features, lambda m: m.fc),
    "resnet50": (_tv_resnet_features, lambda m: m.fc),
    "squeezenet1_1": (_tv_squeezenet_features, _tv_squeezenet_head),
}


@dataclass
class CachePlan:
    """Whether a run can train its head on cached backbone features, and why (not)."""

    reason: str
    features: Callable | None = None
    head: nn.Module | None = None

    @property
    def use(self) -> bool:
        return self.head is not None


def plan_feature_cache(settings: dict, model: nn.Module) -> CachePlan:
    """Caching is exact only if the backbone computes the same function of the same inputs every epoch."""
    recipe = settings["recipe"]
    if not recipe.get("feature_cache", True):
        return CachePlan("recipe.feature_cache is false")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    spec_head = model.get_submodule(models.get_spec(settings["model"]).head)
    if not trainable or not trainable <= {id(p) for p in spec_head.parameters()}:
        return CachePlan(f"parameters outside the head train (trainable: {settings['trainable']})")
    if settings["augment"] not in ("none", "kmnist10x"):  # kmnist10x is a fixed set made once: no per-batch draws
        return CachePlan(f"the training batches are augmented (augment: {settings['augment']}), so the backbone "
                         "sees different inputs every epoch")
    if settings["model"] not in FEATURE_SPLITS:
        return CachePlan(f"no backbone/head split is defined for model {settings['model']} "
                         f"(defined for: {', '.join(FEATURE_SPLITS)})")
    features, make_head = FEATURE_SPLITS[settings["model"]]
    head = make_head(model)
    if not trainable <= {id(p) for p in head.parameters()}:
        return CachePlan(f"the backbone/head split of {settings['model']} leaves trainable parameters outside")
    head_modules = set(head.modules())
    backbone = [m for m in model.modules() if m not in head_modules]
    if any(isinstance(m, _BatchNorm) for m in backbone) and recipe.get("bn_frozen", "train") != "eval":
        return CachePlan("BatchNorm runs in train mode (recipe.bn_frozen: train), so the frozen backbone's running "
                         "statistics change every batch and its features are not fixed")
    if any(isinstance(m, _DropoutNd) and m.p > 0 for m in backbone):
        return CachePlan("dropout inside the backbone is active in train mode, so its features are random")
    note = ("; the dropout before the head is applied to the cached features with the same RNG stream"
            if any(isinstance(m, _DropoutNd) and m.p > 0 for m in head_modules) else "")
    return CachePlan("only the head trains, over a fixed backbone (no active BatchNorm statistics, no "
                     f"augmentation){note}", features, head)


def _cache_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = FEATURE_CACHE_MAX_BYTES * 2  # unknown: let the fixed cap decide
        try:  # MemAvailable counts reclaimable page cache; free pages alone understate what can be used
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
        except OSError:
            pass
    return min(FEATURE_CACHE_MAX_BYTES, free // 2)


@torch.no_grad()
def compute_features(features: Callable, model: nn.Module, split: Split, batch_size: int, channels_last: bool,
                     amp: bool, device: torch.device) -> torch.Tensor:
    """The backbone's output for every image of ``split``, in order (eval mode: no RNG is drawn)."""
    model.eval()
    chunks = []
    for x, _ in split.batches(batch_size, None, train=False):
        with _autocast(device, amp):
            chunks.append(features(model, _to_format(x, channels_last)))
    return torch.cat(chunks)


@dataclass
class Stage:
    """What the epoch loop trains and evaluates: the full model on images, or the head on cached features."""

    net: nn.Module
    splits: dict
    channels_last: bool
    cached: bool
    reason: str


def _split_reproduces(model: nn.Module, plan: CachePlan, split: Split, channels_last: bool) -> bool:
    """Guard against model code drifting away from FEATURE_SPLITS: compare on two images."""
    x, _ = next(split.batches(2, None, train=False))
    x = _to_format(x, channels_last)
    model.eval()
    with torch.no_grad():
        full = model(x).float()
        parts = plan.head(plan.features(model, x)).float()
    return full.shape == parts.shape and torch.allclose(full, parts, rtol=1e-4, atol=1e-5)


def build_stage(settings: dict, model: nn.Module, splits: dict, speed: dict, device: torch.device,
                eval_batch: int) -> Stage:
    """The full model on the image splits, or (when exact and affordable) the head on cached features."""
    full = Stage(model, splits, speed["channels_last"], False, "")
    plan = plan_feature_cache(settings, model)
    if plan.use and not _split_reproduces(model, plan, splits["train"], speed["channels_last"]):
        plan = CachePlan(f"the backbone/head split of {settings['model']} does not reproduce the model's output")
    if not plan.use:
        full.reason = plan.reason
        return full
    # Size the cache from one image before committing memory to it.
    distinct = {id(s): s for s in splits.values()}
    probe = compute_features(plan.features, model, Split(splits["train"].x[:1], splits["train"].y[:1],
                                                         splits["train"].transform, device),
                             1, speed["channels_last"], speed["amp_bf16"], device)
    need = probe[0].numel() * probe.element_size() * sum(len(s) for s in distinct.values())
    budget = _cache_budget(device)
    if need > budget:
        full.reason = (f"cached features would take {need / 2**30:.2f} GiB, over the {budget / 2**30:.2f} GiB "
                       "budget (FEATURE_CACHE_MAX_BYTES or half the free memory)")
        return full
    t0 = time.time()
    cached: dict[int, Split] = {}
    for key, split in distinct.items():
        feats = compute_features(plan.features, model, split, eval_batch, speed["channels_last"],
                                 speed["amp_bf16"], device)
        cached[key] = Split(feats, split.y, _identity, device)
    # Feature batches take the memory format the backbone emits: dropout masks depend on it.
    feat_cl = probe.dim() == 4 and probe.is_contiguous(memory_format=torch.channels_last) \
        and not probe.is_contiguous()
    log.info("feature cache: %s features of shape %s (%.1f MiB) computed in %.1f s",
             sum(len(s) for s in distinct.values()), tuple(probe.shape[1:]), need / 2**20, time.time() - t0)
    return Stage(plan.head, {name: cached[id(s)] for name, s in splits.items()}, feat_cl, True, plan.reason)


# ---------------------------------------------------------------------------------------------------------------------
# progress bar
# ---------------------------------------------------------------------------------------------------------------------


class ProgressBar:
    """One in-place line on a terminal; silent when the stream is not a TTY, so job logs stay clean."""

    def __init__(self, total: int, desc: str, stream=None, enabled: bool | None = None, min_interval: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total, self.desc, self.min_interval = total, desc, min_interval
        self.started = self.last = time.time()
        self.drawn = False

    def update(self, done: int, loss: Callable[[], float] | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        if now - self.last < self.min_interval and done < self.total:
            return
        self.last = now
        frac = done / max(self.total, 1)
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        # loss is a callable so the device sync it costs happens only when a line is drawn.
        loss_text = f" loss {loss():.4f}" if loss is not None else ""
        self.stream.write(f"\r\033[K{self.desc} [{bar}] {done}/{self.total}{loss_text} "
                          f"{rate:.1f} batch/s ETA {_format_eta(eta)}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\r\033[K")  # clear it before the epoch's log line
            self.stream.flush()


# ---------------------------------------------------------------------------------------------------------------------
# one epoch, evaluation
# ---------------------------------------------------------------------------------------------------------------------


def train_one_epoch(model, split: Split, optimizer, criterion, batch_size: int, generator, bn_frozen: str,
                    channels_last: bool, amp: bool = False, desc: str = "train") -> tuple[float, float]:
    model.train()
    models.set_bn_mode(model, bn_frozen)
    device = split.x.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batches = 0
    bar = ProgressBar(math.ceil(len(split) / batch_size), desc)
    for x, y in split.batches(batch_size, generator, train=True):
        with _autocast(device, amp):
            logits = model(_to_format(x, channels_last))
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        batches += 1
        bar.update(batches, lambda: float(total_loss) / batches)
    bar.close()
    # Mean of the per-batch losses: what Keras logs and what seed 002's plateau rule reads.
    return float(total_loss) / max(batches, 1), float(correct) / max(len(split), 1)


@torch.no_grad()
def evaluate(model, split: Split, criterion, batch_size: int, num_classes: int, channels_last: bool,
             detailed: bool = False, amp: bool = False) -> dict:
    model.eval()
    device = split.x.device
    total_loss, seen = 0.0, 0
    preds, top5 = [], 0
    for x, y in split.batches(batch_size, None, train=False):
        with _autocast(device, amp):
            logits = model(_to_format(x, channels_last))
        logits = logits.float()
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


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint helpers
# ---------------------------------------------------------------------------------------------------------------------


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


def _remove_stale_temporaries(outputs: RunOutputs) -> None:
    # A SIGKILL during an atomic write leaves its temporary behind (io.atomic_path names them .<file>.*.tmp);
    # only this job writes these paths, so anything left over is garbage.
    for path in (outputs.checkpoint, outputs.weights, outputs.history, outputs.metrics):
        for stale in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
            stale.unlink(missing_ok=True)


def mutable_state(model: nn.Module, clone: bool = False) -> dict:
    """The state entries training can change: trainable parameters and buffers (BatchNorm statistics).

    Frozen parameters never change, so checkpoints and the kept "best" state leave them out: for a frozen
    ResNet50 that is ~100 MB less to write every epoch, which would otherwise dominate a cached-feature epoch.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: (v.detach().clone() if clone else v) for k, v in model.state_dict().items()
            if k in trainable or k in buffers}


def frozen_digest(model: nn.Module) -> str:
    """sha256 of the state a checkpoint leaves out, so a resume can check it starts from the same frozen weights."""
    mutable = mutable_state(model)
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        if key not in mutable:
            digest.update(key.encode())
            # contiguous(): the digest must not depend on the channels_last layout.
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_state(model: nn.Module, partial: dict) -> None:
    # Strict loading of the full dict: a key the model does not have is still an error.
    model.load_state_dict({**model.state_dict(), **partial})


def _load_checkpoint(path: Path, fingerprint: str, device: torch.device) -> dict | None:
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a damaged file must not cost the run: start over instead
        log.warning("ignoring checkpoint %s: it cannot be read (%s: %s)", path, type(exc).__name__, exc)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint \
            or ckpt.get("version") != CHECKPOINT_VERSION:
        log.warning("ignoring checkpoint %s: it was written for other settings, data or engine version", path)
        return None
    return ckpt


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _write_history(path: Path, history: list[dict]) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


# ---------------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------------


def train_run(settings: dict, data_path: str | Path, outputs: RunOutputs, weights_dir: str | Path | None = None,
              threads: int | None = None) -> dict:
    """Train one run as ``settings`` (cnnrepro.config.run_settings) describe it; write all outputs."""
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(settings["device"])
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    recipe = settings["recipe"]
    seed = settings["seed"]
    torch.manual_seed(seed)
    if hasattr(torch, "use_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    _remove_stale_temporaries(outputs)

    data = datasets.read_compact(data_path)
    splits = build_splits(settings, data, device, generator)
    model = build_run_model(settings, weights_dir=weights_dir)
    speed = effective_speed(recipe, device.type, any(isinstance(m, nn.Conv2d) for m in model.modules()),
                            device.type == "cuda" and torch.cuda.is_bf16_supported())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = speed["cudnn_benchmark"]
    model = model.to(device, memory_format=torch.channels_last if speed["channels_last"] else torch.preserve_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, recipe)
    schedule = schedules.make_schedule(recipe)
    criterion = loss_fn(recipe.get("loss", "ce"), settings["num_classes"])
    batch_size = recipe["batch_size"]
    eval_batch = recipe.get("eval_batch_size", max(batch_size, 256))
    max_epochs = recipe.get("max_epochs", recipe.get("epochs"))
    bn_frozen = recipe.get("bn_frozen", "train")
    amp = speed["amp_bf16"]

    # The data's sha256 too: a rebuilt dataset under unchanged settings must not continue an old run.
    fingerprint = settings_hash({"settings": settings, "data_sha256": data_sha256(data_path)})
    frozen = frozen_digest(model)
    history: list[dict] = []
    best_state, best_epoch = None, None
    start_epoch = 1
    ckpt = _load_checkpoint(outputs.checkpoint, fingerprint, device)
    if ckpt is not None and ckpt.get("frozen_digest") != frozen:
        log.warning("ignoring checkpoint %s: its frozen weights differ from this model's (changed weights file?)",
                    outputs.checkpoint)
        ckpt = None
    if ckpt is not None:
        _load_state(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        _set_rng_state(ckpt["rng"], generator)
        history, best_state, best_epoch = ckpt["history"], ckpt["best_state"], ckpt["best_epoch"]
        start_epoch = ckpt["epoch"] + 1
        log.info("resuming %s from the checkpoint after epoch %d", settings["run_id"], ckpt["epoch"])
        del ckpt

    log.info("run %s on %s (%s): %d train / %d eval / %d test images, %d of %d parameters trainable",
             settings["run_id"], device, device_name(device), len(splits["train"]), len(splits["eval"]),
             len(splits["test"]), sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters()))
    # After the checkpoint is loaded, so the features come from the restored backbone.
    stage = build_stage(settings, model, splits, speed, device, eval_batch)
    log.info("feature cache: %s — %s", "on" if stage.cached else "off", stage.reason)
    log.info("speed: channels_last=%s amp_bf16=%s cudnn_benchmark=%s compile=%s (requested %s)",
             speed["channels_last"], amp, speed["cudnn_benchmark"], speed["compile"], speed["requested"])
    # The compiled module only runs forward passes; state always comes from the plain `model`.
    net = torch.compile(stage.net) if speed["compile"] else stage.net
    speed_record = {**speed, "feature_cache": stage.cached, "feature_cache_reason": stage.reason}

    def run_eval(split_name: str, detailed: bool = False) -> dict:
        return evaluate(net, stage.splits[split_name], criterion, eval_batch, settings["num_classes"],
                        stage.channels_last, detailed, amp)

    stop = bool(history) and history[-1].get("stop", False)
    epoch = start_epoch - 1
    while not stop:
        epoch += 1
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.time()
        train_loss, train_acc = train_one_epoch(net, stage.splits["train"], optimizer, criterion, batch_size,
                                                generator, bn_frozen, stage.channels_last, amp,
                                                f"epoch {epoch}/{max_epochs}")
        if not math.isfinite(train_loss):
            # The job still succeeds, with a record marked diverged, so aggregation and the report complete.
            log.error("run %s DIVERGED: training loss became %s in epoch %d; stopping, metrics marked diverged",
                      settings["run_id"], train_loss, epoch)
            return _write_diverged(model, outputs, settings, history, epoch, train_loss, started, device,
                                   speed_record)
        ev = run_eval("eval")
        seconds = time.time() - t0
        decision = schedule.end_epoch(epoch, {"train_loss": train_loss, "train_acc": train_acc,
                                              "eval_loss": ev["loss"], "eval_acc": ev["acc"]})
        stop = decision.stop
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "eval_loss": ev["loss"],
               "eval_acc": ev["acc"], "lr": lr, "epoch_seconds": seconds}
        history.append({**row, "stop": stop, "stop_reason": decision.reason})
        if decision.best:
            best_state = mutable_state(model, clone=True)
            best_epoch = epoch
        for group in optimizer.param_groups:
            group["lr"] = decision.lr
        remaining = (max_epochs - epoch) * (sum(h["epoch_seconds"] for h in history) / len(history))
        log.info("epoch %d/%s loss %.4f acc %.4f eval_loss %.4f eval_acc %.4f lr %.2e %.1fs ETA %s%s",
                 epoch, max_epochs, train_loss, train_acc, ev["loss"], ev["acc"], lr, seconds,
                 ("≤" if recipe.get("schedule", "constant") != "constant" else "") + _format_eta(remaining),
                 f" — stop: {decision.reason}" if stop else "")
        io.torch_save({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "frozen_digest": frozen,
                       "epoch": epoch, "model": mutable_state(model), "optimizer": optimizer.state_dict(),
                       "schedule": schedule.state_dict(), "rng": _rng_state(generator), "history": history,
                       "best_state": best_state, "best_epoch": best_epoch}, outputs.checkpoint)

    last = run_eval("test", True)
    last_eval = run_eval("eval")
    selected_epoch = epoch
    if recipe.get("select", "last") == "best" and best_state is not None:
        # The head module shares its parameters with `model`, so this also updates a cached stage.
        _load_state(model, best_state)
        selected_epoch = best_epoch
    test = last if selected_epoch == epoch else run_eval("test", True)
    final_eval = last_eval if selected_epoch == epoch else run_eval("eval")
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
        "speed": speed_record,
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
                    started: float, device: torch.device, speed: dict | None = None) -> dict:
    """Leave a metrics record that says the run diverged, so aggregation and the report still complete."""
    record = {
        "status": "diverged", "run_id": settings["run_id"], "settings": settings,
        "diverged_epoch": epoch, "diverged_loss": str(loss), "epochs_run": epoch - 1,
        "train_seconds": time.time() - started, "torch_version": torch.__version__, "device": str(device),
        "device_name": device_name(device), "speed": speed}
    io.torch_save(model.state_dict(), outputs.weights)
    _write_history(outputs.history, [{k: h[k] for k in HISTORY_FIELDS} for h in history])
    io.write_json(outputs.metrics, record)
    outputs.checkpoint.unlink(missing_ok=True)
    return record
