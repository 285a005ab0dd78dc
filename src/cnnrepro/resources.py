"""Memory a job asks its scheduler for: a formula over what the job holds, not a constant.

Deliberately rough (each run's measured peak is in its metrics.json, ``peak_memory_bytes``), but it grows with
what matters: the dataset held in memory (times an expansion such as seed 003's 10 copies), the model with its
gradients and optimizer state, and the activations of one batch at the model's input size.
"""

from __future__ import annotations

import functools
import math

RUNTIME_MB = 1500  # Python, torch and its kernels, before any data
ACTIVATION_FACTOR = 64  # activations of a CNN forward+backward per input value, rough
SAFETY = 1.5


def dataset_bytes(dataset: str, data_settings: dict) -> int:
    """Bytes of the compact uint8 dataset (both splits) as the data settings make it."""
    from cnnrepro.datasets import DATASETS

    info = DATASETS[dataset]
    if data_settings["source"] == "synthetic":
        counts = [data_settings["synthetic_train"], data_settings["synthetic_test"]]
    else:
        counts = [info.split_sizes["train"], info.split_sizes["test"]]
    counts = [min(n, cap) if cap else n
              for n, cap in zip(counts, (data_settings["subsample_train"], data_settings["subsample_test"]))]
    return sum(counts) * info.channels * info.size * info.size


@functools.lru_cache(maxsize=None)
def _params(model: str, num_classes: int, in_channels: int, input_size: int | None) -> int:
    from cnnrepro import models

    return models.count_params(models.build_model(model, num_classes, in_channels, input_size))


def _input_values(settings: dict) -> int:
    from cnnrepro import models

    side = settings["input"]["size"] or models.get_spec(settings["model"]).input_size
    return settings["in_channels"] * side * side


def train_mem_mb(settings: dict, data_settings: dict) -> int:
    """A training job: the dataset (expanded), weights + gradients + two optimizer moments, and, when it trains
    on the CPU, one batch's activations (on a GPU they are in GPU memory, which mem_mb does not cover)."""
    data = dataset_bytes(settings["dataset"], data_settings) * (1 + settings["augment_copies"]
                                                               if settings["augment"] == "kmnist10x" else 1)
    model = 4 * 4 * _params(settings["model"], settings["num_classes"], settings["in_channels"],
                            settings["input"]["size"])
    recipe = settings["recipe"]
    batch = max(recipe["batch_size"], recipe["eval_batch_size"] or 256)
    activations = 4 * ACTIVATION_FACTOR * batch * _input_values(settings) if settings["device"] == "cpu" else 0
    return math.ceil(SAFETY * (RUNTIME_MB + (data + model + activations) / 2**20))


def bench_mem_mb(settings: dict, data_settings: dict, bench: dict) -> int:
    """A benchmark job: the uint8 test set, the model twice (a saved copy is measured), the largest batch."""
    data = dataset_bytes(settings["dataset"], data_settings)
    model = 2 * 4 * _params(settings["model"], settings["num_classes"], settings["in_channels"],
                            settings["input"]["size"])
    activations = 4 * ACTIVATION_FACTOR * max(bench["batch_sizes"]) * _input_values(settings)
    return math.ceil(SAFETY * (RUNTIME_MB + (data + model + activations) / 2**20))


def prepare_mem_mb(dataset: str, data_settings: dict) -> int:
    """Preparing a dataset: the source arrays and the compact copy, a few times over while converting."""
    return math.ceil(SAFETY * (RUNTIME_MB + 4 * dataset_bytes(dataset, data_settings) / 2**20))
