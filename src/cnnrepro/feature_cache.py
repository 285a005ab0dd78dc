"""Feature caching: train the head on backbone features computed once, when that is exact.

When only the head trains over a backbone that computes the same function of the same inputs in every
epoch, the epoch loop can run on cached features instead of images: a :class:`Stage` of the head module
and feature splits replaces the full model and image splits, and the loop itself does not change.
The model's registration says where its backbone ends (``ModelSpec.feature_split``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from cnnrepro import augment, models
from cnnrepro.recipe import autocast, to_format
from cnnrepro.splits import Split, identity

log = logging.getLogger("cnnrepro.feature_cache")

# Cached features must fit comfortably: at most this much, and at most half of the free memory.
MAX_BYTES = 4 * 2**30


@dataclass
class CachePlan:
    """Whether a run can train its head on cached backbone features, and why (not)."""

    reason: str
    features: Callable | None = None
    head: nn.Module | None = None

    @property
    def use(self) -> bool:
        return self.head is not None


@dataclass
class Stage:
    """What the epoch loop trains and evaluates: the full model on images, or the head on cached features."""

    net: nn.Module
    splits: dict
    channels_last: bool
    cached: bool
    reason: str


def plan(settings: dict, model: nn.Module) -> CachePlan:
    """Caching is exact only if the backbone computes the same function of the same inputs every epoch."""
    recipe = settings["recipe"]
    if not recipe["feature_cache"]:
        return CachePlan("recipe.feature_cache is false")
    spec = models.get_spec(settings["model"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not trainable or not trainable <= {id(p) for p in model.get_submodule(spec.head).parameters()}:
        return CachePlan(f"parameters outside the head train (trainable: {settings['trainable']})")
    if augment.AUGMENTATIONS[settings["augment"]].per_batch:
        return CachePlan(f"the training batches are augmented (augment: {settings['augment']}), so the backbone "
                         "sees different inputs every epoch")
    if spec.feature_split is None:
        return CachePlan(f"model {settings['model']} registers no backbone/head split (feature_split)")
    head = spec.feature_split.head(model)
    if not trainable <= {id(p) for p in head.parameters()}:
        return CachePlan(f"the backbone/head split of {settings['model']} leaves trainable parameters outside")
    head_modules = set(head.modules())
    backbone = [m for m in model.modules() if m not in head_modules]
    if any(isinstance(m, _BatchNorm) for m in backbone) and recipe["bn_frozen"] != "eval":
        return CachePlan("BatchNorm runs in train mode (recipe.bn_frozen: train), so the frozen backbone's running "
                         "statistics change every batch and its features are not fixed")
    if any(isinstance(m, _DropoutNd) and m.p > 0 for m in backbone):
        return CachePlan("dropout inside the backbone is active in train mode, so its features are random")
    note = ("; the dropout before the head is applied to the cached features with the same RNG stream"
            if any(isinstance(m, _DropoutNd) and m.p > 0 for m in head_modules) else "")
    return CachePlan("only the head trains, over a fixed backbone (no active BatchNorm statistics, no "
                     f"augmentation){note}", spec.feature_split.features, head)


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
def compute_features(features: Callable, model: nn.Module, split: Split, batch_size: int, channels_last: bool,
                     amp: bool, device: torch.device) -> torch.Tensor:
    """The backbone's output for every image of ``split``, in order (eval mode: no RNG is drawn)."""
    model.eval()
    chunks = []
    for x, _ in split.batches(batch_size, None, train=False):
        with autocast(device, amp):
            chunks.append(features(model, to_format(x, channels_last)))
    return torch.cat(chunks)


def _split_reproduces(model: nn.Module, cache_plan: CachePlan, split: Split, channels_last: bool) -> bool:
    """Guard against model code drifting away from its registered feature split: compare on two images."""
    x, _ = next(split.batches(2, None, train=False))
    x = to_format(x, channels_last)
    model.eval()
    with torch.no_grad():
        full = model(x).float()
        parts = cache_plan.head(cache_plan.features(model, x)).float()
    return full.shape == parts.shape and torch.allclose(full, parts, rtol=1e-4, atol=1e-5)


def build_stage(settings: dict, model: nn.Module, splits: dict, speed: dict, device: torch.device,
                eval_batch: int) -> Stage:
    """The full model on the image splits, or (when exact and affordable) the head on cached features."""
    full = Stage(model, splits, speed["channels_last"], False, "")
    cache_plan = plan(settings, model)
    if cache_plan.use and not _split_reproduces(model, cache_plan, splits["train"], speed["channels_last"]):
        cache_plan = CachePlan(f"the backbone/head split of {settings['model']} does not reproduce the model's output")
    if not cache_plan.use:
        full.reason = cache_plan.reason
        return full
    # Size the cache from one image before committing memory to it.
    distinct = {id(s): s for s in splits.values()}
    train = splits["train"]
    probe = compute_features(cache_plan.features, model, Split(train.x[:1], train.y[:1], train.transform, device),
                             1, speed["channels_last"], speed["amp_bf16"], device)
    need = probe[0].numel() * probe.element_size() * sum(len(s) for s in distinct.values())
    budget = _budget(device)
    if need > budget:
        full.reason = (f"cached features would take {need / 2**30:.2f} GiB, over the {budget / 2**30:.2f} GiB "
                       "budget (feature_cache.MAX_BYTES or half the free memory)")
        return full
    t0 = time.time()
    cached: dict[int, Split] = {}
    for key, split in distinct.items():
        feats = compute_features(cache_plan.features, model, split, eval_batch, speed["channels_last"],
                                 speed["amp_bf16"], device)
        cached[key] = Split(feats, split.y, identity, device)
    # Feature batches take the memory format the backbone emits: dropout masks depend on it.
    feat_cl = probe.dim() == 4 and probe.is_contiguous(memory_format=torch.channels_last) \
        and not probe.is_contiguous()
    log.info("feature cache: %s features of shape %s (%.1f MiB) computed in %.1f s",
             sum(len(s) for s in distinct.values()), tuple(probe.shape[1:]), need / 2**20, time.time() - t0)
    return Stage(cache_plan.head, {name: cached[id(s)] for name, s in splits.items()}, feat_cl, True,
                 cache_plan.reason)
