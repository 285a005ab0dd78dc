"""How fast a device computes for the plan, and what a pass of images through a model costs on it.

Time on a device is ``max(FLOPs / sustained FLOP/s, steps x ops x seconds per op)`` per pass: a big model is
bound by arithmetic, a tiny one (seed 003's KMNIST nets) by launching kernels. GPU figures are datasheet peaks
times an efficiency calibrated on the one GPU measurement we have (seed 000's T4 times); the CPU figure is
measured on this machine in a few seconds (:func:`calibrate_cpu`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from cnnrepro import models
from cnnrepro.engine.recipe import SPEED_SWITCHES, effective_speed
from cnnrepro.plan.cost import model_cost, settings_cost, stages
from cnnrepro.runtime.device import cpu_name

# ---------------------------------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A GPU's dense peak throughput per number format (FLOP/s) and its memory, from the vendor's datasheet."""

    name: str
    label: str
    fp32: float
    tf32: float | None  # dense TF32 tensor-core peak; None: no TF32 (pre-Ampere)
    bf16: float | None  # dense bf16 tensor-core peak; None: no native bf16
    memory_gib: float
    capability: tuple[int, int]


# Peaks are dense (NVIDIA prints tensor-core figures "with sparsity", twice the dense rate).
DEVICES = {
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: FP32 67 TFLOPS, TF32 Tensor Core 989 TFLOPS* and
    # BF16 Tensor Core 1,979 TFLOPS* (*with sparsity; dense is half), 80 GB.
    "h100": Device("h100", "NVIDIA H100 SXM 80GB", 67e12, 494.5e12, 989.5e12, 80, (9, 0)),
    # NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5 TFLOPS, TF32 Tensor Core 156 TFLOPS (312 with sparsity),
    # BF16 Tensor Core 312 TFLOPS (624 with sparsity); 40 GB, the smaller of the two models.
    "a100": Device("a100", "NVIDIA A100 40GB", 19.5e12, 156e12, 312e12, 40, (8, 0)),
    # NVIDIA T4 Tensor Core GPU datasheet: single precision 8.1 TFLOPS, 16 GB GDDR6. Turing has neither TF32 nor
    # native bf16 (recipe.effective_speed leaves both off there).
    "t4": Device("t4", "NVIDIA T4 16GB", 8.1e12, None, None, 16, (7, 5)),
}
DEVICE_CHOICES = (*DEVICES, "cpu")
# Sustained fraction of the fp32 peak, calibrated on seed 000's published times (ResNet18/34/50 linear probes on
# MNIST at 224 px, 30 epochs, one Tesla T4: 3,736 / 4,748 / 7,002 s): the FLOPs this model counts for those
# three runs divided by (T4 peak x their total time). Per model it is 0.25 / 0.40 / 0.30; the authors' input
# pipeline (a per-image resize on Colab's CPU) is in those times, so ours should be faster, not slower.
# tests/test_plan.py recomputes it from the measurement (:func:`t4_calibration`).
GPU_EFFICIENCY = 0.32
SEED000_T4_SECONDS = {"resnet18": 3736, "resnet34": 4748, "resnet50": 7002}
# Tensor-core peaks (TF32, bf16) are far harder to reach for convolutional nets; no measurement exists here, so
# this is an assumption, not a calibration: read bf16/TF32 estimates as rough.
TENSOR_EFFICIENCY = 0.15
# Eager PyTorch launches one kernel per aten op; the CPU-side cost (dispatch + launch) is a few to ~20 us.
# Assumed, not measured (no GPU here). A step of a small model costs at least ops x this.
GPU_SECONDS_PER_OP = 10e-6
# Start-up of a training job: interpreter and torch imports, reading the data, building the model.
JOB_STARTUP_SECONDS = 30.0
# A CPU rate to plan with when no calibration was run (the workflow's resources, which must not take seconds
# at every start): the lower end of what calibrate_cpu measured on this project's machine kind (2 cores,
# torch 2.14.1, 2026-11): ~45 GFLOP/s per thread on a ResNet18-CIFAR training step.
REFERENCE_CPU_FLOPS_PER_THREAD = 30e9
REFERENCE_CPU_SECONDS_PER_OP = 20e-6


@dataclass(frozen=True)
class Rate:
    """How fast a device computes for this plan: sustained FLOP/s, the cost of one op, and where they come from."""

    device: str
    label: str
    flops_per_second: float
    seconds_per_op: float
    basis: str
    memory_gib: float | None = None


def gpu_rate(name: str, speed: dict | None = None) -> Rate:
    """The rate of GPU ``name`` under the config's ``speed`` switches (fp32 unless TF32/bf16 are on and exist)."""
    device = DEVICES[name]
    speed = {**dict.fromkeys(SPEED_SWITCHES, False), **(speed or {})}
    used = effective_speed(speed, "cuda", True, device.capability)
    if used["amp_bf16"] and device.bf16:
        peak, fmt, eff = device.bf16, "bf16 tensor cores (speed.amp_bf16)", TENSOR_EFFICIENCY
    elif used["tf32"] and device.tf32:
        peak, fmt, eff = device.tf32, "TF32 tensor cores (speed.tf32)", TENSOR_EFFICIENCY
    else:
        peak, fmt, eff = device.fp32, "fp32, no TF32 (as the papers)", GPU_EFFICIENCY
    how = ("calibrated on seed 000's T4 times" if eff == GPU_EFFICIENCY else "assumed, no measurement")
    basis = (f"{device.label}: {fmt} peak {peak / 1e12:.1f} TFLOP/s (datasheet) x efficiency {eff:.2f} ({how}); "
             f"{GPU_SECONDS_PER_OP * 1e6:.0f} us per op (assumed)")
    return Rate(name, device.label, peak * eff, GPU_SECONDS_PER_OP, basis, device.memory_gib)


def reference_cpu_rate(threads: int) -> Rate:
    """A CPU rate without measuring (for the workflow's resources): the reference figure per thread."""
    return Rate("cpu", f"CPU, {threads} threads (reference)", REFERENCE_CPU_FLOPS_PER_THREAD * threads,
                REFERENCE_CPU_SECONDS_PER_OP,
                f"reference CPU rate {REFERENCE_CPU_FLOPS_PER_THREAD / 1e9:.0f} GFLOP/s per thread x {threads} "
                "threads (not measured on this machine)")


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibrate_cpu(threads: int, seconds: float = 1.5) -> Rate:
    """Measure this machine: training steps of the CIFAR ResNet18 (batch 8, 32 px) for about ``seconds``, and a
    loop of tiny ops for the per-op cost. The FLOPs are this module's count of the same step."""
    cost = model_cost("resnet18_cifar", 10, 3, None, 32, "{}")
    step_flops = 8 * 3 * cost.flops  # forward + backward (2x forward), all layers train
    torch.manual_seed(0)
    model = models.build_model("resnet18_cifar", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with _threads(threads):
        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        step()  # warm-up: first-call allocations
        steps, start = 0, time.perf_counter()
        while steps < 1 or time.perf_counter() - start < seconds:
            step()
            steps += 1
        elapsed = time.perf_counter() - start
        a, b = torch.zeros(1), torch.ones(1)
        n_ops, t0 = 2000, time.perf_counter()
        for _ in range(n_ops):
            torch.add(a, b)
        per_op = (time.perf_counter() - t0) / n_ops
    rate = steps * step_flops / elapsed
    return Rate("cpu", f"{cpu_name()}, {threads} threads", rate, per_op,
                f"measured here: {rate / 1e9:.0f} GFLOP/s on {steps} ResNet18-CIFAR training steps (batch 8, "
                f"{threads} threads, {elapsed:.1f} s); {per_op * 1e6:.1f} us per op")


def step_time(flops: float, ops: int, rate: Rate) -> float:
    """Seconds of one step of ``flops`` in ``ops`` kernels at ``rate``: bound by arithmetic or by launches."""
    return max(flops / rate.flops_per_second, ops * rate.seconds_per_op)


@dataclass(frozen=True)
class Pass:
    """``images`` through the model at ``batch``: FLOPs and ops per image / per step; ``step_seconds``: a step's
    measured time (cnnrepro.plan.calibration), which replaces the rate's estimate."""

    what: str
    images: int
    batch: int
    flops_per_image: float
    ops_per_step: int
    step_seconds: float | None = None

    @property
    def flops(self) -> float:
        return self.images * self.flops_per_image

    @property
    def steps(self) -> int:
        return math.ceil(self.images / self.batch) if self.images else 0

    def step_estimate(self, rate: Rate) -> float:
        return step_time(self.batch * self.flops_per_image, self.ops_per_step, rate)

    def seconds(self, rate: Rate) -> float:
        if self.step_seconds is not None:
            return self.steps * self.step_seconds
        return max(self.flops / rate.flops_per_second, self.steps * self.ops_per_step * rate.seconds_per_op)


# ---------------------------------------------------------------------------------------------------------------------
# calibration against the one GPU measurement we have
# ---------------------------------------------------------------------------------------------------------------------


def t4_calibration() -> dict[str, float]:
    """The fp32 efficiency each of seed 000's T4 times implies (model FLOPs / (T4 peak x seconds)), and the
    pooled one (all FLOPs / all peak-seconds), which is :data:`GPU_EFFICIENCY`. Their runs as config.yaml has
    them: 60,000 train + 10,000 test MNIST images at 224 px in RGB, 30 epochs, BatchNorm statistics updated
    (so no caching), evaluated every epoch; the final record passes are not in the authors' times."""
    settings_base = {"num_classes": 10, "in_channels": 3, "input": {"size": 224}, "model_options": {},
                     "trainable": ["head"], "augment": "none", "recipe": {"bn_frozen": "train"}}
    peak = DEVICES["t4"].fp32
    out, flops_all, seconds_all = {}, 0.0, 0.0
    for model, seconds in SEED000_T4_SECONDS.items():
        settings = {**settings_base, "model": model, "dataset": "mnist"}
        cost = settings_cost(settings)
        stage = stages(settings, cost)
        flops = 30 * (60_000 * (cost.flops + 2 * stage.tail_flops) + 10_000 * cost.flops)
        out[model] = flops / (peak * seconds)
        flops_all += flops
        seconds_all += seconds
    out["pooled"] = flops_all / (peak * seconds_all)
    return out
