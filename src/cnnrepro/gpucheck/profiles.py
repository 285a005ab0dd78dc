"""How big each step of gpu-check is on each kind of device.

The GPU profile is what a first run on a GPU must prove and what the plan assumes, in under eight minutes. The CPU
profile runs the same steps small, so that the script is known to work before anyone pays for a GPU (the test suite
runs it): one run of the smoke preset, a small model trained for a few seconds, and one model per freeze level timed
at a small batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The whole check's time on one GPU, as the issue that asked for it set it.
BUDGET_SECONDS = 480.0


@dataclass(frozen=True)
class Profile:
    name: str
    # The one run of the smoke preset to train (its job and what it needs; None: the whole preset), and the time kept
    # back for the steps after it.
    smoke_run: str | None
    reserve_after_smoke: float
    # The run of the configuration that is trained twice (determinism) and interrupted and resumed; its data is
    # synthetic (train, test images), its length and batch set here (batch None: the run's own).
    training_run: str
    training_images: tuple[int, int]
    training_epochs: int
    training_batch: int | None
    training_threads: int | None  # per training process (None: the configuration's train_threads)
    # Overrides of the configuration's benchmark block for the benchmark step.
    bench: dict
    # Step times: every (study, model, freeze) of the configuration, or the cheapest per freeze level; the batch
    # capped (None: each study's own); warm-up steps, then samples of steps_per_sample steps until timed_samples
    # are taken or timed_seconds have passed (at least MIN_SAMPLES).
    timing_runs: str
    batch_cap: int | None
    warmup_steps: int
    steps_per_sample: int
    timed_samples: int
    timed_seconds: float
    # Speed switches this profile does not time, and why.
    left_out: dict = field(default_factory=dict)


MIN_SAMPLES = 3

GPU = Profile(
    name="gpu", smoke_run=None, reserve_after_smoke=150.0,
    # SqueezeNet on CIFAR-10 (seed 002): BatchNorm, dropout, augmentation on the device, a plateau schedule and the
    # best epoch's state in every checkpoint, all of which a resume must restore.
    training_run="seed002_squeezenet_dsc/cifar10/squeezenet/none/base/seed0",
    training_images=(5000, 1000), training_epochs=6, training_batch=None, training_threads=None,
    bench={"runs": 20, "warmup": 5, "paper_runs": 100, "batch_sizes": [1, 32, 128], "throughput_runs": 5},
    timing_runs="all", batch_cap=None, warmup_steps=3, steps_per_sample=4, timed_samples=10, timed_seconds=2.0,
)

CPU = Profile(
    name="cpu", smoke_run="smoke_sanity/mnist/cnn/none/base/seed0", reserve_after_smoke=30.0,
    training_run="seed003_kmnist_fcnn_cnn/kmnist/cnn/none/augment-none/seed42",
    training_images=(96, 32), training_epochs=4, training_batch=32, training_threads=1,
    bench={"runs": 5, "warmup": 1, "paper_runs": 10, "batch_sizes": [1, 8], "throughput_runs": 2},
    timing_runs="cheapest_per_freeze", batch_cap=8, warmup_steps=1, steps_per_sample=1, timed_samples=3,
    timed_seconds=1.0,
    left_out={"compile": "the CPU profile leaves torch.compile out: compiling takes 30-50 s per model on a CPU"},
)

PROFILES = {"cuda": GPU, "cpu": CPU}
