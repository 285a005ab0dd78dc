"""What a run holds in memory: on its training device (weights, gradients, optimizer state, one batch's activations,
the uint8 data, any feature cache) and on its host, which is what a job asks its scheduler for (``mem_mb``).

Host memory grows with what matters: the dataset held in memory (times an expansion such as seed 003's 10 copies),
the model with its gradients and optimizer state, and, when the job computes on the CPU, one batch's activations
as counted on the meta device (cnnrepro.plan.cost). Each run's measured peak is in its metrics.json
(``peak_memory_bytes``) to check the requests against.
"""

from __future__ import annotations

import math

from cnnrepro.data.augment import AUGMENTATIONS
from cnnrepro.data.prepare import CHUNK as PREPARE_CHUNK
from cnnrepro.data.prepare import dataset_facts, split_counts
from cnnrepro.engine.evaluation import eval_batch_size
from cnnrepro.plan.cost import ModelCost, Stages, settings_cost, stages

RUNTIME_MB = 1500  # Python, torch and its kernels, before any data
SAFETY = 1.5  # memory


OPTIMIZER_STATES = {"sgd": lambda r: 1 if r.get("momentum") else 0, "adam": lambda r: 2,
                    "rmsprop": lambda r: 1, "adadelta": lambda r: 2}


def run_images(settings: dict, data_settings: dict) -> dict[str, int]:
    """Images per pass of a run: train (after a validation carve and a fixed expansion), eval, test."""
    counts = split_counts(settings["dataset"], data_settings)
    train, test = counts["train"], counts["test"]
    evaluation = test
    if settings["eval_split"] == "val":
        evaluation = round(train * settings["val_fraction"])
        train -= evaluation
    if AUGMENTATIONS[settings["augment"]].copies:
        train *= settings["augment_copies"]
    return {"train": train, "eval": evaluation, "test": test, "eval_is_test": settings["eval_split"] == "test"}


def device_bytes(settings: dict, data_settings: dict, cost: ModelCost, stage: Stages, cache_bytes: int) -> int:
    """Memory on the training device: weights, gradients and optimizer state, one batch's activations (the tail's
    op outputs are kept for the backward pass; two of the largest are alive at once), the uint8 data, the cache."""
    recipe = settings["recipe"]
    states = OPTIMIZER_STATES[recipe["optimizer"]](recipe)
    weights = 4 * (cost.params + stage.trainable_params * (1 + states))
    train_act = recipe["batch_size"] * (stage.tail_bytes + 2 * cost.max_output_bytes)
    eval_act = eval_batch_size(recipe) * 2 * cost.max_output_bytes
    return weights + max(train_act, eval_act) + device_data_bytes(settings, data_settings) + cache_bytes


def device_data_bytes(settings: dict, data_settings: dict) -> int:
    """The run's uint8 splits, held on the training device for the whole run (cnnrepro.data.splits)."""
    info = dataset_facts(settings["dataset"], data_settings)
    images = run_images(settings, data_settings)
    return (images["train"] + images["eval"] + images["test"]) * info.channels * info.size * info.size


def activation_bytes(settings: dict) -> int:
    """Activation memory of one training step (what :func:`device_bytes` counts), for host-memory requests."""
    cost = settings_cost(settings)
    stage = stages(settings, cost)
    recipe = settings["recipe"]
    return max(recipe["batch_size"] * (stage.tail_bytes + 2 * cost.max_output_bytes),
               eval_batch_size(recipe) * 2 * cost.max_output_bytes)


# ---------------------------------------------------------------------------------------------------------------------
# host memory: the jobs' mem_mb requests
# ---------------------------------------------------------------------------------------------------------------------


def dataset_bytes(dataset: str, data_settings: dict) -> int:
    """Bytes of the compact uint8 dataset (both splits) as the data settings make it."""
    info = dataset_facts(dataset, data_settings)
    return sum(split_counts(dataset, data_settings).values()) * info.channels * info.size * info.size


def _mapped(data_settings: dict) -> bool:
    """A declared dataset's compact file is read through a shared memory map (cnnrepro.data.compact.MappedWriter):
    the page cache holds it, which the kernel reclaims under the job's limit, and batches stream from it when it does
    not fit. The job asks for the memory it computes with, not for the dataset."""
    return "facts" in data_settings


def _model_bytes(settings: dict, copies: int) -> int:
    return 4 * copies * settings_cost(settings).params


def train_mem_mb(settings: dict, data_settings: dict) -> int:
    """A training job: the dataset (expanded), weights + gradients + two optimizer moments, and, when it trains
    on the CPU, one batch's activations (on a GPU they are in GPU memory, which mem_mb does not cover)."""
    # A fixed expansion holds the originals and their copies while it is made.
    expands = AUGMENTATIONS[settings["augment"]].copies
    held = 0 if _mapped(data_settings) else 1  # a mapped dataset is not held by the job (only an expansion is)
    data = dataset_bytes(settings["dataset"], data_settings) * (held + settings["augment_copies"] if expands else held)
    activations = activation_bytes(settings) if settings["device"] == "cpu" else 0
    return math.ceil(SAFETY * (RUNTIME_MB + (data + _model_bytes(settings, 4) + activations) / 2**20))


def bench_mem_mb(settings: dict, data_settings: dict, bench: dict) -> int:
    """A benchmark job: the uint8 test set, the model twice (a saved copy is measured), the largest batch's
    forward pass (two of its largest op outputs alive at once)."""
    data = 0 if _mapped(data_settings) else dataset_bytes(settings["dataset"], data_settings)
    activations = 2 * max(bench["batch_sizes"]) * settings_cost(settings).max_output_bytes
    return math.ceil(SAFETY * (RUNTIME_MB + (data + _model_bytes(settings, 2) + activations) / 2**20))


def prepare_mem_mb(dataset: str, data_settings: dict) -> int:
    """Preparing a dataset: the source arrays and the compact copy, a few times over while converting. Image folders
    are written image by image into a mapped file (cnnrepro.data.prepare.prepare_declared): a chunk of images at a
    time, whatever the dataset's size; a torchvision class's arrays are held once (torchvision reads them whole)."""
    if _mapped(data_settings) and data_settings["source"] == "imagefolder":
        info = dataset_facts(dataset, data_settings)
        chunk = 4 * PREPARE_CHUNK * info.channels * info.size * info.size  # decoded, resized and as floats
        return math.ceil(SAFETY * (RUNTIME_MB + chunk / 2**20))
    if _mapped(data_settings):
        # torchvision's arrays of every image at their own size, once; the resized chunk being written.
        facts = data_settings["facts"]
        side = facts["native_size"] or facts["size"]
        source = sum(facts["split_sizes"].values()) * facts["channels"] * side * side
        chunk = 4 * PREPARE_CHUNK * facts["channels"] * facts["size"] * facts["size"]
        return math.ceil(SAFETY * (RUNTIME_MB + (source + chunk) / 2**20))
    return math.ceil(SAFETY * (RUNTIME_MB + 4 * dataset_bytes(dataset, data_settings) / 2**20))
