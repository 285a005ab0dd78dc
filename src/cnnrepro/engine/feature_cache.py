"""Frozen-prefix caching: compute a fixed frozen prefix of the network once, train only the rest on its output.

When the trainable modules all come after a frozen prefix that computes the same function of the same inputs
in every epoch (no per-batch augmentation, no dropout, BatchNorm in eval mode or absent), the epoch loop can
run on the prefix's output, computed once, instead of on images: a :class:`Stage` of the suffix modules and
cached splits replaces the full model and the image splits, and the loop itself does not change. Training a
new head over a frozen backbone is the special case of a one-module suffix; seed 004's
``last_two_fire_and_head`` (fire8, fire9 and the head over a frozen conv1-fire7) is the general one.

The model's registration lists it as a chain of stages (``ModelSpec.feature_split``); the cut goes before the
first stage holding a trainable parameter, and a parameter-free random stage just before it (the dropout in
front of a head) moves to the suffix, where it draws the same random numbers as in the full model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from cnnrepro import models
from cnnrepro.data import augment
from cnnrepro.data.splits import Split, identity
from cnnrepro.engine.recipe import autocast, to_format

log = logging.getLogger(__name__)

# Cached features must fit comfortably: at most this much, and at most half of the free memory.
MAX_BYTES = 4 * 2**30

StageList = list[tuple[str, nn.Module]]


@dataclass
class CachePlan:
    """Whether a run can train its suffix on the cached output of a frozen prefix, and why (not)."""

    reason: str
    prefix: StageList = field(default_factory=list)
    suffix: StageList = field(default_factory=list)

    @property
    def use(self) -> bool:
        return bool(self.prefix)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.prefix:
            x = module(x)
        return x

    def suffix_net(self) -> nn.Module:
        # A plain Sequential of the model's own modules: it shares their parameters, so the optimizer, the
        # checkpoints and the saved weights (all of `model`) see what the suffix trains.
        return nn.Sequential(*(module for _, module in self.suffix))


@dataclass
class Stage:
    """What the epoch loop trains and evaluates: the full model on images, or the suffix on cached features."""

    net: nn.Module
    splits: dict
    channels_last: bool
    cached: bool
    reason: str


def _random(module: nn.Module) -> bool:
    return any(isinstance(m, _DropoutNd) and m.p > 0 for m in module.modules())


def _span(stages: StageList) -> str:
    names = [name for name, _ in stages]
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} stages)"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def plan(settings: dict, model: nn.Module) -> CachePlan:
    """Caching is exact only if the prefix computes the same function of the same inputs every epoch."""
    recipe = settings["recipe"]
    if not recipe["feature_cache"]:
        return CachePlan("recipe.feature_cache is false")
    if settings["trainable"] == "all":
        return CachePlan("every module trains (trainable: all): there is no frozen prefix to cache")
    spec = models.get_spec(settings["model"])
    if spec.feature_split is None:
        return CachePlan(f"model {settings['model']} registers no chain of stages (feature_split) to cut into a "
                         "frozen prefix and a trained suffix")
    if augment.AUGMENTATIONS[settings["augment"]].per_batch:
        return CachePlan(f"the training batches are augmented (augment: {settings['augment']}), so the frozen "
                         "prefix sees different inputs every epoch")
    stages = spec.feature_split.stages(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    first = next((i for i, (_, m) in enumerate(stages) if any(id(p) in trainable for p in m.parameters())), None)
    if first is None:
        return CachePlan(f"no stage of {settings['model']} holds a trainable parameter (trainable: "
                         f"{settings['trainable']})")
    cut = first
    while cut > 0 and not any(True for _ in stages[cut - 1][1].parameters()) and _random(stages[cut - 1][1]):
        cut -= 1  # parameter-free dropout just before the trained stages: it goes with them
    prefix, suffix = stages[:cut], stages[cut:]
    if not prefix:
        return CachePlan(f"the first stage of {settings['model']} ({stages[first][0]}) trains (trainable: "
                         f"{settings['trainable']}), so there is no frozen prefix to cache")
    batch_stats = [name for name, m in prefix
                   if any(isinstance(b, _BatchNorm) and not b.track_running_stats for b in m.modules())]
    if batch_stats:
        return CachePlan(f"BatchNorm in the frozen prefix ({batch_stats[0]}) normalises with the statistics of each "
                         "batch (track_running_stats off), so its output depends on the batch")
    bn_train = [name for name, m in prefix if any(isinstance(b, _BatchNorm) for b in m.modules())]
    if bn_train and recipe["bn_frozen"] != "eval":
        return CachePlan(f"BatchNorm runs in train mode (recipe.bn_frozen: train), so the frozen prefix's running "
                         f"statistics ({bn_train[0]}) change every batch and its output is not fixed")
    random = [name for name, m in prefix if _random(m)]
    if random:
        return CachePlan(f"dropout inside the frozen prefix ({random[0]}) is active in train mode, so its output "
                         "is random")
    note = ("; the dropout among the trained stages draws the same random numbers on it as in the full model"
            if any(_random(m) for _, m in suffix) else "")
    return CachePlan(f"the trained stages {_span(suffix)} follow a frozen prefix {_span(prefix)} that computes the "
                     "same output every epoch (no active BatchNorm statistics, no dropout, no augmentation); "
                     f"its output is computed once{note}", prefix, suffix)


def _budget(device: torch.device) -> int:
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = MAX_BYTES * 2  # unknown: let the fixed cap decide
        try:  # MemAvailable counts reclaimable page cache; free pages alone understate what can be used
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
        except OSError:
            pass
    return min(MAX_BYTES, free // 2)


@torch.no_grad()
def compute_features(cache_plan: CachePlan, split: Split, batch_size: int, channels_last: bool, amp: bool,
                     device: torch.device) -> torch.Tensor:
    """The prefix's output for every image of ``split``, in order (eval mode: no RNG is drawn)."""
    for _, module in cache_plan.prefix:
        module.eval()
    chunks = []
    for x, _ in split.batches(batch_size, None, train=False):
        with autocast(device, amp):
            chunks.append(cache_plan.features(to_format(x, channels_last)))
    return torch.cat(chunks)


def _split_reproduces(model: nn.Module, cache_plan: CachePlan, split: Split, channels_last: bool) -> bool:
    """Guard against model code drifting away from its registered stages: compare on two images."""
    x, _ = next(split.batches(2, None, train=False))
    x = to_format(x, channels_last)
    model.eval()
    with torch.no_grad():
        full = model(x).float()
        parts = cache_plan.suffix_net()(cache_plan.features(x)).float()
    return full.shape == parts.shape and torch.allclose(full, parts, rtol=1e-4, atol=1e-5)


def build_stage(settings: dict, model: nn.Module, splits: dict, speed: dict, device: torch.device,
                eval_batch: int) -> Stage:
    """The full model on the image splits, or (when exact and affordable) the suffix on the cached prefix output."""
    full = Stage(model, splits, speed["channels_last"], False, "")
    cache_plan = plan(settings, model)
    if cache_plan.use and not _split_reproduces(model, cache_plan, splits["train"], speed["channels_last"]):
        cache_plan = CachePlan(f"the registered stages of {settings['model']} do not reproduce the model's output")
    if not cache_plan.use:
        full.reason = cache_plan.reason
        return full
    # Size the cache from one image before committing memory to it.
    distinct = {id(s): s for s in splits.values()}
    train = splits["train"]
    probe = compute_features(cache_plan, Split(train.x[:1], train.y[:1], train.transform, device), 1,
                             speed["channels_last"], speed["amp_bf16"], device)
    need = probe[0].numel() * probe.element_size() * sum(len(s) for s in distinct.values())
    budget = _budget(device)
    if need > budget:
        full.reason = (f"the output of the frozen prefix {_span(cache_plan.prefix)} would take {_size(need)} "
                       f"cached, over the {_size(budget)} budget (feature_cache.MAX_BYTES or half the free memory)")
        return full
    t0 = time.time()
    cached: dict[int, Split] = {}
    for key, split in distinct.items():
        feats = compute_features(cache_plan, split, eval_batch, speed["channels_last"], speed["amp_bf16"], device)
        cached[key] = Split(feats, split.y, identity, device)
    # Feature batches take the memory format the prefix emits: dropout masks depend on it.
    feat_cl = probe.dim() == 4 and probe.is_contiguous(memory_format=torch.channels_last) \
        and not probe.is_contiguous()
    log.info("feature cache: %s outputs of %s, shape %s (%.1f MiB), computed in %.1f s; training runs %s",
             sum(len(s) for s in distinct.values()), _span(cache_plan.prefix), tuple(probe.shape[1:]),
             need / 2**20, time.time() - t0, _span(cache_plan.suffix))
    return Stage(cache_plan.suffix_net(), {name: cached[id(s)] for name, s in splits.items()}, feat_cl, True,
                 cache_plan.reason)
