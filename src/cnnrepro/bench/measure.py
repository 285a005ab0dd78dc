"""Model size, FLOPs, latency, throughput and memory measurements.

Two kinds of latency are recorded side by side:

* ``latency_paper`` repeats the procedure of the Seed 002 dissertation (``ags5/DL2017.2``,
  ``main.py``): ``time.time()`` around the forward call of every single test example at batch 1,
  no CUDA synchronisation (so GPU numbers are asynchronous launch times), warm-up calls included,
  ``cudnn.benchmark = True``; mean and population std in ms.
* ``latency_correct`` is a sound measurement: warm-up excluded, the device synchronised around each
  timed call, ``torch.utils.benchmark.Timer`` with an explicit thread count, per-run samples
  summarised by median / mean / std / p90 / min.

Compare the two with the paper by *ranking*, not by absolute value: the hardware differs.

Size conventions (Seed 002, "Tamanho"): the authors' size is the byte count of a ``torch.save`` of
``{'net': <whole pickled nn.Module>, 'acc': ..., 'epoch': ...}``.

* the **CIFAR-100 table** (Tabelas 1-5 C100 rows, Tabela 8) matches ``bytes / 2**20`` (MiB)
  -> compare with ``checkpoint_MiB``;
* the **CIFAR-10 table** (Tabelas 1-5 C10 rows, Tabela 6) matches ``bytes / 1,024,000``
  (KiB / 1000) -> compare with ``checkpoint_MB_1024000``.

``size_record`` reports both units for both the whole-module checkpoint and the state_dict.

Every device-dependent function takes a ``device``; GPU-only steps (synchronisation, CUDA memory
statistics, cuDNN autotuning) sit behind small seams (``sync`` callables, ``device.cuda_available``) so the
logic runs and is tested on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import platform
import resource
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnrepro.bench.record import NO_CUDA, not_measured_record
from cnnrepro.runtime import device as devices
from cnnrepro.runtime.io import torch_save

__all__ = [
    "size_record",
    "flops_record",
    "latency_correct",
    "latency_paper",
    "throughput",
    "peak_inference_memory",
    "device_record",
    "benchmark_model",
    "run_benchmark",
]

log = logging.getLogger(__name__)

MIB = 2**20
MB_1024000 = 1_024_000

PAPER_METHOD = "paper-faithful (unsynchronised time.time, warm-up included)"


# --------------------------------------------------------------------------- small helpers


def _as_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _sync_for(device: torch.device) -> Callable[[], None]:
    """Return the synchronisation callable for ``device``: a no-op on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _synced_clock(sync: Callable[[], None]) -> Callable[[], float]:
    """A clock for ``torch.utils.benchmark.Timer`` that waits for the device before reading time."""

    def clock() -> float:
        sync()
        return timeit.default_timer()

    return clock


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[int]:
    """Set the intra-op thread count for the block (None: keep it) and restore it afterwards."""
    before = torch.get_num_threads()
    if num_threads is not None and num_threads != before:
        torch.set_num_threads(int(num_threads))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no_grad for the block; the model's previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _forward_timer(model: nn.Module, x: torch.Tensor, threads: int, sync: Callable[[], None], label: str):
    """A Timer of one forward pass whose clock synchronises the device before every reading."""
    # deferred: torch.utils.benchmark asks torch about CUDA devices when imported, which the job server (it
    # preloads this module) must never do before a job has its GPU.
    from torch.utils.benchmark import Timer  # deferred: see above

    return Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads,
                 timer=_synced_clock(sync), label=label)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),  # population std (ddof=0), like numpy's default
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def _check_counts(runs: int, warmup: int = 0) -> None:
    if int(runs) < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if int(warmup) < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


# --------------------------------------------------------------------------- size


def _saved_bytes(obj: Any) -> int:
    with tempfile.TemporaryDirectory(prefix="cnnrepro-size-") as tmp:
        path = Path(tmp) / "obj.pt"
        torch_save(obj, path)
        return path.stat().st_size


def size_record(model: nn.Module, num_classes: int | None = None) -> dict:
    """Parameter counts and on-disk sizes of ``model``.

    ``checkpoint_bytes`` is the size of ``torch.save({'net': model, 'acc': 0.0, 'epoch': 0})``, the
    authors' whole-module ``ckpt.t7`` layout (the module is pickled, so its class must be importable);
    ``state_dict_bytes`` is the size of ``torch.save(model.state_dict())``.

    Units: ``*_MiB`` = bytes / 2**20, the convention of the dissertation's **CIFAR-100** table;
    ``*_MB_1024000`` = bytes / 1,024,000, the convention of its **CIFAR-10** table.
    """
    params = list(model.parameters())  # parameters() already de-duplicates shared tensors
    state_dict_bytes = _saved_bytes(model.state_dict())
    try:
        checkpoint_bytes = _saved_bytes({"net": model, "acc": 0.0, "epoch": 0})
    except (AttributeError, TypeError, pickle.PicklingError) as err:  # pickling a local / lambda-holding module
        raise TypeError(
            f"cannot pickle the whole module {type(model).__qualname__} for the checkpoint size; "
            "its class must be importable at module level"
        ) from err
    return {
        "num_classes": num_classes,
        "params_total": int(sum(p.numel() for p in params)),
        "params_trainable": int(sum(p.numel() for p in params if p.requires_grad)),
        "buffers_total": int(sum(b.numel() for b in model.buffers())),
        "state_dict_bytes": int(state_dict_bytes),
        "checkpoint_bytes": int(checkpoint_bytes),
        "state_dict_MiB": state_dict_bytes / MIB,
        "checkpoint_MiB": checkpoint_bytes / MIB,
        "state_dict_MB_1024000": state_dict_bytes / MB_1024000,
        "checkpoint_MB_1024000": checkpoint_bytes / MB_1024000,
        "size_conventions": {
            "checkpoint": "torch.save({'net': module, 'acc': 0.0, 'epoch': 0}) (authors' ckpt.t7 layout)",
            "MiB": "bytes / 2**20 (paper CIFAR-100 table)",
            "MB_1024000": "bytes / 1,024,000 (paper CIFAR-10 table)",
        },
    }


# --------------------------------------------------------------------------- FLOPs


def flops_record(model: nn.Module, input_shape: Sequence[int]) -> dict:
    """Forward FLOPs at batch 1 (eval, no_grad) counted by ``FlopCounterMode``.

    ``input_shape`` is the per-example shape *without* the batch dimension (e.g. ``(3, 32, 32)``);
    a batch dimension of 1 is prepended. Only the forward pass is counted: in torch 2.14.1 the
    counter ignores ``groups`` in the weight-gradient FLOPs of grouped convolutions, but its forward
    counts are right. One multiply-accumulate counts as 2 FLOPs, so ``macs_forward = flops / 2``.
    """
    shape = [int(s) for s in input_shape]
    example = torch.zeros([1, *shape], device=_model_device(model))
    counter = FlopCounterMode(display=False)
    with _eval_no_grad(model):
        with counter:
            model(example)
    flops = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "flops_forward": flops,
        "macs_forward": flops // 2,
        "input_shape": shape,
        "batch_size": 1,
        "flops_by_operator": by_op,
        "method": "torch.utils.flop_counter.FlopCounterMode, forward only, eval + no_grad, batch 1",
    }


# --------------------------------------------------------------------------- latency


def latency_correct(
    model: nn.Module,
    example: torch.Tensor,
    device: str | torch.device,
    runs: int = 50,
    warmup: int = 10,
    num_threads: int | None = None,
    *,
    sync: Callable[[], None] | None = None,
) -> dict:
    """Synchronised per-call latency of ``model(example)`` with warm-up excluded.

    The model is moved to ``device`` in place and run in eval mode under no_grad. ``warmup`` untimed
    calls come first; then ``runs`` samples, each one ``torch.utils.benchmark.Timer.timeit(number=1)``
    whose clock calls ``sync`` before reading the time (``torch.cuda.synchronize`` on CUDA, a no-op on
    CPU; pass ``sync`` to override). Note that ``Timer.timeit`` itself also runs two untimed calls
    before each timed one. ``num_threads`` None means the current ``torch.get_num_threads()``.
    """

    _check_counts(runs, warmup)
    dev = _as_device(device)
    sync = sync or _sync_for(dev)
    model.to(dev)
    x = example.to(dev)
    with _torch_threads(num_threads) as threads, _eval_no_grad(model):
        for _ in range(int(warmup)):
            model(x)
        sync()
        timer = _forward_timer(model, x, threads, sync, "latency_correct")
        samples = [timer.timeit(number=1).times[0] for _ in range(int(runs))]
    return {
        **_summary_ms(samples),
        "runs": int(runs),
        "warmup": int(warmup),
        "num_threads": int(threads),
        "batch_size": int(x.shape[0]) if x.dim() > 0 else 1,
        "device": str(dev),
        "method": "correct",
        "timer": "torch.utils.benchmark.Timer.timeit(number=1) per sample, synchronised clock",
    }


def _single_examples(inputs: torch.Tensor | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() < 2:
            raise ValueError("a tensor of inputs needs a leading example dimension")
        for i in range(inputs.shape[0]):
            yield inputs[i : i + 1]
        return
    for item in inputs:
        if isinstance(item, (tuple, list)):  # (image, label) pairs from a DataLoader
            item = item[0]
        if item.dim() == 3:
            item = item.unsqueeze(0)
        if item.shape[0] != 1:
            for i in range(item.shape[0]):
                yield item[i : i + 1]
        else:
            yield item


def wrap_like_authors(model: nn.Module, device_type: str, data_parallel: bool) -> nn.Module:
    """The module the authors timed: wrapped in nn.DataParallel on a GPU when their script did so."""
    return nn.DataParallel(model) if data_parallel and device_type == "cuda" else model


def latency_paper(
    model: nn.Module,
    inputs: torch.Tensor | Iterable[torch.Tensor],
    device: str | torch.device,
) -> dict:
    """The authors' timing: ``time.time()`` around each batch-1 forward call, as in their main.py.

    ``inputs`` is a tensor ``[N, C, H, W]`` or an iterable of batch-1 tensors (or of
    ``(image, label)`` pairs). Each example is moved to ``device`` before the clock starts (data
    transfer excluded), there is **no** synchronisation, the first (warm-up) calls are included, and
    ``cudnn.benchmark`` is True on CUDA (restored afterwards). The std is the population std.
    """
    dev = _as_device(device)
    model.to(dev)
    samples: list[float] = []
    bench = _cudnn_benchmark(True) if dev.type == "cuda" else contextlib.nullcontext()
    with bench, _eval_no_grad(model):
        for example in _single_examples(inputs):
            x = example.to(dev)
            start = time.time()
            model(x)
            samples.append(time.time() - start)
    if not samples:
        raise ValueError("latency_paper needs at least one input example")
    ms = [s * 1e3 for s in samples]
    return {
        "mean_ms": statistics.fmean(ms),
        "std_ms": statistics.pstdev(ms),
        "first_ms": ms[0],
        "runs": len(ms),
        "device": str(dev),
        "num_threads": torch.get_num_threads(),
        "method": PAPER_METHOD,
    }


# --------------------------------------------------------------------------- throughput


def throughput(
    model: nn.Module,
    input_shape_chw: Sequence[int],
    device: str | torch.device,
    batch_sizes: Sequence[int] = (1, 32, 128),
    runs: int = 10,
    num_threads: int | None = None,
    *,
    sync: Callable[[], None] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Images per second at each batch size (eval, no_grad, synchronised).

    For each batch size, ``torch.utils.benchmark.Timer.timeit(number=runs)`` (which runs two untimed
    warm-up calls first) times ``runs`` forward calls on a random batch; ``images_per_s`` is
    ``batch_size * runs / total_seconds``. A CUDA out-of-memory at some batch size is recorded as an
    ``error`` for that size instead of failing the whole record.
    """

    _check_counts(runs)
    dev = _as_device(device)
    sync = sync or _sync_for(dev)
    model.to(dev)
    gen = torch.Generator().manual_seed(seed)
    shape = [int(s) for s in input_shape_chw]
    records: list[dict] = []
    with _torch_threads(num_threads) as threads, _eval_no_grad(model):
        for bs in batch_sizes:
            bs = int(bs)
            rec: dict[str, Any] = {
                "batch_size": bs,
                "runs": int(runs),
                "num_threads": int(threads),
                "device": str(dev),
                "method": "torch.utils.benchmark.Timer.timeit(number=runs), synchronised clock",
            }
            try:
                x = torch.randn([bs, *shape], generator=gen).to(dev)
                timer = _forward_timer(model, x, threads, sync, "throughput")
                seconds = float(timer.timeit(number=int(runs)).mean)
                rec.update(
                    seconds_per_batch=seconds,
                    ms_per_batch=seconds * 1e3,
                    images_per_s=bs / seconds,
                )
            except torch.OutOfMemoryError as err:
                rec.update(seconds_per_batch=None, ms_per_batch=None, images_per_s=None,
                           error=f"out of memory: {err}".splitlines()[0])
                x = None
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            records.append(rec)
    return records


# --------------------------------------------------------------------------- memory


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def peak_inference_memory(
    model: nn.Module, example: torch.Tensor, device: str | torch.device
) -> dict:
    """Peak memory of one eval/no_grad forward call of ``model(example)``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak statistics; ``peak_bytes``
    includes the weights already on the device, ``activation_peak_bytes`` is the growth above them.
    CPU: growth of the process resident set size during the call, i.e. peak RSS (``VmHWM`` after a
    reset through ``/proc/self/clear_refs``) minus the RSS before the call; where the reset is not
    possible, the growth of ``getrusage().ru_maxrss`` (a lower bound: 0 if an earlier peak was
    higher). CPU figures are approximate because the allocator may reuse memory it already holds.
    """
    dev = _as_device(device)
    model.to(dev)
    x = example.to(dev)
    gc.collect()
    with _eval_no_grad(model):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            baseline = torch.cuda.memory_allocated(dev)
            model(x)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            return {
                "peak_bytes": int(peak),
                "baseline_bytes": int(baseline),
                "activation_peak_bytes": int(peak - baseline),
                "device": str(dev),
                "method": "torch.cuda.max_memory_allocated (includes weights on device)",
            }
        rss_before = _proc_status_bytes("VmRSS")
        if rss_before is not None and _reset_peak_rss():
            rss_before = _proc_status_bytes("VmRSS") or rss_before
            model(x)
            hwm = _proc_status_bytes("VmHWM") or rss_before
            growth = max(0, hwm - rss_before)
            method = "cpu: process RSS growth (VmHWM after clear_refs reset minus VmRSS before)"
        else:
            before = _maxrss_bytes()
            model(x)
            growth = max(0, _maxrss_bytes() - before)
            method = "cpu: growth of getrusage ru_maxrss (lower bound)"
    return {"peak_bytes": int(growth), "device": str(dev), "method": method}


# --------------------------------------------------------------------------- device


def device_record(device: str | torch.device) -> dict:
    """Which hardware and software the numbers come from."""
    dev = _as_device(device)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    record: dict[str, Any] = {
        "device": str(dev),
        "device_kind": "gpu" if dev.type == "cuda" else dev.type,
        "cpu_count": os.cpu_count(),
        "cpu_affinity_count": affinity,
        "cpu_name": devices.cpu_name(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "cuda_version": torch.version.cuda,
        "platform": platform.platform(),
        "python_version": platform.python_version(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        record["device_name"] = torch.cuda.get_device_name(dev)
        record["gpu_total_memory_bytes"] = int(props.total_memory)
        record["cudnn_version"] = torch.backends.cudnn.version()
    else:
        record["device_name"] = record["cpu_name"]
    return record


# --------------------------------------------------------------------------- full record


def benchmark_model(
    model: nn.Module,
    input_shape_chw: Sequence[int],
    device: str | torch.device,
    settings: dict,
    paper_inputs: torch.Tensor | Iterable[torch.Tensor] | None = None,
    data_parallel: bool = False,
) -> dict:
    """Every measurement for one model on one device.

    ``settings`` (the config's ``benchmark`` block; its defaults are in the schema): ``runs`` and
    ``warmup`` for ``latency_correct``; ``num_threads`` (None: keep torch's default and record it);
    ``paper_runs`` random examples for ``latency_paper`` when ``paper_inputs`` is not given;
    ``batch_sizes`` and ``throughput_runs`` for ``throughput``; ``seed`` for the random inputs;
    optional ``num_classes`` (copied into the size record).

    The paper-faithful latency runs first, before anything else calls the model, so it pays the first-call
    costs the authors paid, and with torch's default thread count, as their script ran; ``data_parallel``
    wraps the model in nn.DataParallel for it on a GPU (seed 002's main.py). The other measurements follow
    with ``num_threads`` set for them and restored afterwards; the model is moved to ``device``.
    """
    cfg = dict(settings)
    dev = _as_device(device)
    shape = [int(s) for s in input_shape_chw]
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    if paper_inputs is None:
        paper_inputs = torch.randn([int(cfg["paper_runs"]), *shape], generator=gen)
    model.to(dev)
    timed = wrap_like_authors(model, dev.type, data_parallel)
    paper = latency_paper(timed, paper_inputs, dev)
    paper["data_parallel"] = timed is not model
    with _torch_threads(cfg["num_threads"]) as threads:
        model.to(dev)
        example = torch.randn([1, *shape], generator=gen)
        record: dict[str, Any] = {
            "measured": True,
            "device_kind": "gpu" if dev.type == "cuda" else dev.type,
            "device": device_record(dev),
            "input_shape_chw": shape,
            "settings": {**cfg, "num_threads": threads, "batch_sizes": list(cfg["batch_sizes"])},
            "size": size_record(model, num_classes=cfg.get("num_classes")),  # optional: not a config key
            "flops": flops_record(model, shape),
        }
        record["peak_memory"] = peak_inference_memory(model, example, dev)
        record["latency_correct"] = latency_correct(
            model, example, dev, runs=int(cfg["runs"]), warmup=int(cfg["warmup"]), num_threads=threads
        )
        record["latency_paper"] = paper
        record["throughput"] = throughput(
            model, shape, dev, batch_sizes=cfg["batch_sizes"], runs=int(cfg["throughput_runs"]),
            num_threads=threads, seed=int(cfg["seed"]),
        )
    return record


def run_benchmark(
    model: nn.Module,
    input_shape_chw: Sequence[int],
    kind: str,
    settings: dict,
    paper_inputs: torch.Tensor | Iterable[torch.Tensor] | None = None,
    data_parallel: bool = False,
) -> dict:
    """``benchmark_model`` on the CPU (kind "cpu") or on ``cuda:0`` (kind "gpu").

    For kind "gpu" without a CUDA device, returns ``not_measured_record(NO_CUDA, "gpu")`` instead of failing.
    """
    if kind == "cpu":
        return benchmark_model(model, input_shape_chw, torch.device("cpu"), settings, paper_inputs, data_parallel)
    if kind == "gpu":
        if not devices.cuda_available():
            return not_measured_record(NO_CUDA, "gpu")
        return benchmark_model(model, input_shape_chw, torch.device("cuda", 0), settings, paper_inputs, data_parallel)
    raise ValueError(f"kind must be 'cpu' or 'gpu', got {kind!r}")
