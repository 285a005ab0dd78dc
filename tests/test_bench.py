"""Tests for cnnrepro.bench: tiny models, few runs, no assertions on wall-clock magnitudes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnrepro.bench import measure, trained
from tests.conftest import bench_options


class TinyNet(nn.Module):
    """Conv -> BN -> ReLU -> depthwise conv -> pool -> linear; importable, so it pickles."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.dw(x)
        return self.fc(x.mean(dim=(2, 3)))


SHAPE = (3, 8, 8)
LATENCY_FIELDS = {"median_ms", "mean_ms", "std_ms", "p90_ms", "min_ms", "runs", "warmup", "num_threads", "method"}


def _assert_latency_stats(rec: dict) -> None:
    for key in ("median_ms", "mean_ms", "std_ms", "p90_ms", "min_ms"):
        assert math.isfinite(rec[key]), key
    assert rec["std_ms"] >= 0
    assert rec["median_ms"] > 0
    assert rec["min_ms"] > 0
    assert rec["p90_ms"] >= rec["median_ms"] >= rec["min_ms"]


# ----------------------------------------------------------------------------- size


def test_size_conventions_on_known_bytes():
    model = nn.Linear(1000, 1000, bias=False)  # 1e6 float32 = 4,000,000 bytes of weights
    rec = measure.size_record(model, num_classes=1000)
    assert rec["params_total"] == 1_000_000
    assert rec["params_trainable"] == 1_000_000
    assert rec["buffers_total"] == 0
    assert rec["num_classes"] == 1000
    for kind in ("state_dict", "checkpoint"):
        n = rec[f"{kind}_bytes"]
        assert 4_000_000 <= n < 4_000_000 + 64_000
        assert rec[f"{kind}_MiB"] == n / 2**20
        assert rec[f"{kind}_MB_1024000"] == n / 1_024_000
    # the whole-module pickle carries the class, so it is never smaller than the bare state_dict
    assert rec["checkpoint_bytes"] > rec["state_dict_bytes"]


def test_params_trainable_and_buffers():
    model = TinyNet()
    model.conv.weight.requires_grad_(False)
    rec = measure.size_record(model)
    total = sum(p.numel() for p in model.parameters())
    assert rec["params_total"] == total
    assert rec["params_trainable"] == total - model.conv.weight.numel()
    # BN: running_mean (8) + running_var (8) + num_batches_tracked (1)
    assert rec["buffers_total"] == 17


def test_size_record_rejects_unpicklable_module():
    class Local(nn.Module):  # defined in a function: cannot be pickled as a whole module
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="importable"):
        measure.size_record(Local())


# ----------------------------------------------------------------------------- FLOPs


def test_flops_linear():
    rec = measure.flops_record(nn.Linear(100, 10), (100,))
    assert rec["flops_forward"] == 2000
    assert rec["macs_forward"] == 1000
    assert rec["input_shape"] == [100]


def test_flops_conv_known_output():
    # 3->16, 3x3, stride 1, pad 1 on 8x8: output 16x8x8, each output 3*3*3 MACs
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    rec = measure.flops_record(conv, (3, 8, 8))
    assert rec["flops_forward"] == 2 * 16 * 8 * 8 * 27


def test_flops_depthwise_forward():
    # depthwise 8 channels, 3x3, pad 1 on 8x8: each output 3*3 MACs (not 8*3*3)
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    rec = measure.flops_record(dw, (8, 8, 8))
    assert rec["flops_forward"] == 2 * 8 * 8 * 8 * 9


def test_flops_restores_training_mode():
    model = TinyNet().train()
    measure.flops_record(model, SHAPE)
    assert model.training


# ----------------------------------------------------------------------------- latency


def test_latency_correct_fields_and_stats():
    model = TinyNet()
    calls = []
    rec = measure.latency_correct(
        model, torch.randn(1, *SHAPE), "cpu", runs=7, warmup=2, num_threads=1, sync=lambda: calls.append(1)
    )
    assert LATENCY_FIELDS <= set(rec)
    assert rec["runs"] == 7 and rec["warmup"] == 2 and rec["num_threads"] == 1
    assert rec["method"] == "correct"
    _assert_latency_stats(rec)
    assert len(calls) >= 2 * 7  # the sync seam is called around every timed sample


def test_latency_correct_restores_threads_and_mode():
    before = torch.get_num_threads()
    model = TinyNet().train()
    measure.latency_correct(model, torch.randn(1, *SHAPE), "cpu", runs=2, warmup=0, num_threads=1)
    assert torch.get_num_threads() == before
    assert model.training


def test_latency_correct_rejects_zero_runs():
    with pytest.raises(ValueError):
        measure.latency_correct(TinyNet(), torch.randn(1, *SHAPE), "cpu", runs=0, warmup=0, num_threads=1)


def test_latency_paper_tensor_and_iterable():
    model = TinyNet()
    rec = measure.latency_paper(model, torch.randn(5, *SHAPE), "cpu")
    assert rec["runs"] == 5
    assert rec["method"] == "paper-faithful (unsynchronised time.time, warm-up included)"
    assert rec["std_ms"] >= 0 and rec["mean_ms"] >= 0
    assert math.isfinite(rec["mean_ms"]) and math.isfinite(rec["std_ms"])

    batches = [torch.randn(1, *SHAPE) for _ in range(3)] + [torch.randn(*SHAPE)]
    assert measure.latency_paper(model, batches, "cpu")["runs"] == 4
    pairs = [(torch.randn(2, *SHAPE), torch.tensor([0, 1]))]  # DataLoader-style, split into singles
    assert measure.latency_paper(model, pairs, "cpu")["runs"] == 2


def test_latency_paper_std_is_population(monkeypatch):
    ticks = iter([0.0, 0.001, 1.0, 1.003])  # two calls: 1 ms and 3 ms
    monkeypatch.setattr(measure.time, "time", lambda: next(ticks))
    rec = measure.latency_paper(nn.Identity(), torch.zeros(2, 1), "cpu")
    assert rec["mean_ms"] == pytest.approx(2.0)
    assert rec["std_ms"] == pytest.approx(1.0)  # population std, not the sample std (1.414)


# ----------------------------------------------------------------------------- throughput / memory


def test_throughput_positive():
    recs = measure.throughput(TinyNet(), SHAPE, "cpu", batch_sizes=(1, 4), runs=3, num_threads=1)
    assert [r["batch_size"] for r in recs] == [1, 4]
    for r in recs:
        assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"])
        assert r["seconds_per_batch"] > 0
        assert r["runs"] == 3


def test_peak_memory_cpu():
    rec = measure.peak_inference_memory(TinyNet(), torch.randn(1, *SHAPE), "cpu")
    assert isinstance(rec["peak_bytes"], int) and rec["peak_bytes"] >= 0
    assert rec["method"].startswith("cpu")


def test_peak_memory_cpu_sees_a_large_allocation():
    class Big(nn.Module):
        def forward(self, x):
            y = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
            return x + y.sum()

    assert Path("/proc/self/clear_refs").exists(), "Linux exposes the peak-RSS reset this measurement uses"
    rec = measure.peak_inference_memory(Big(), torch.zeros(1), "cpu")
    assert "clear_refs" in rec["method"] and rec["peak_bytes"] >= 32 * 2**20


def test_peak_memory_cpu_falls_back_to_maxrss_growth(monkeypatch):
    monkeypatch.setattr(measure, "_reset_peak_rss", lambda: False)
    readings = iter([100 * 2**20, 164 * 2**20])  # ru_maxrss before and after the call
    monkeypatch.setattr(measure, "_maxrss_bytes", lambda: next(readings))
    rec = measure.peak_inference_memory(TinyNet(), torch.randn(1, *SHAPE), "cpu")
    assert rec["method"] == "cpu: growth of getrusage ru_maxrss (lower bound)" and rec["peak_bytes"] == 64 * 2**20


# ----------------------------------------------------------------------------- device / records


def test_device_record_cpu():
    rec = measure.device_record("cpu")
    assert rec["device"] == "cpu"
    assert isinstance(rec["device_name"], str) and rec["device_name"]
    assert rec["cpu_count"] >= 1
    assert rec["torch_version"] == torch.__version__
    assert rec["torch_num_threads"] == torch.get_num_threads()
    assert "cuda_version" in rec


def test_not_measured_record():
    rec = measure.not_measured_record("not measured: no CUDA device", "gpu")
    assert rec == {"measured": False, "reason": "not measured: no CUDA device", "device_kind": "gpu"}


def test_run_benchmark_gpu_without_cuda(monkeypatch):
    monkeypatch.setattr(measure.devices, "cuda_available", lambda: False)
    rec = measure.run_benchmark(TinyNet(), SHAPE, "gpu", bench_options())
    assert rec == {"measured": False, "reason": "not measured: no CUDA device", "device_kind": "gpu"}


def test_run_benchmark_rejects_unknown_kind():
    with pytest.raises(ValueError):
        measure.run_benchmark(TinyNet(), SHAPE, "tpu", bench_options())


def test_run_benchmark_cpu_full_record():
    before = torch.get_num_threads()
    settings = bench_options(runs=4, warmup=1, num_threads=1, paper_runs=6, batch_sizes=[1, 2], throughput_runs=2)
    rec = measure.run_benchmark(TinyNet(), SHAPE, "cpu", settings)
    assert torch.get_num_threads() == before
    assert rec["measured"] is True
    assert rec["device"]["device"] == "cpu"
    assert rec["size"]["params_total"] > 0
    assert rec["flops"]["flops_forward"] > 0
    assert rec["latency_correct"]["runs"] == 4 and rec["latency_correct"]["num_threads"] == 1
    _assert_latency_stats(rec["latency_correct"])
    assert rec["latency_paper"]["runs"] == 6
    assert [r["batch_size"] for r in rec["throughput"]] == [1, 2]
    assert rec["peak_memory"]["peak_bytes"] >= 0
    assert rec["settings"]["num_threads"] == 1


def test_benchmark_model_paper_inputs_and_default_threads():
    before = torch.get_num_threads()
    rec = measure.benchmark_model(
        TinyNet(), SHAPE, "cpu", bench_options(runs=3, warmup=0, batch_sizes=[1], throughput_runs=1, num_threads=None),
        paper_inputs=torch.randn(3, *SHAPE),
    )
    assert rec["latency_paper"]["runs"] == 3  # the inputs given, not paper_runs random ones
    assert rec["settings"]["num_threads"] == before  # None: torch default kept and recorded


def test_record_is_json_serialisable(tmp_path):
    from cnnrepro.runtime.io import read_json, write_json

    rec = measure.benchmark_model(
        TinyNet(), SHAPE, "cpu",
        bench_options(runs=2, warmup=0, paper_runs=2, batch_sizes=[1], throughput_runs=1, num_threads=1),
    )
    write_json(tmp_path / "r.json", rec)
    assert read_json(tmp_path / "r.json")["measured"] is True


# ----------------------------------------------------------------------------- paper-faithful latency


class CountingNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_paper_latency_runs_first_with_default_threads(monkeypatch):
    model, seen, real = CountingNet(), {}, measure.latency_paper

    def spy(timed, inputs, device):
        seen.update(calls_before=model.calls, threads=torch.get_num_threads())
        return real(timed, inputs, device)

    monkeypatch.setattr(measure, "latency_paper", spy)
    default_threads = torch.get_num_threads()
    rec = measure.benchmark_model(model, SHAPE, "cpu", bench_options(runs=2, warmup=1, paper_runs=3, batch_sizes=[1],
                                                                 throughput_runs=1, num_threads=1))
    # Nothing called the model before the authors' timing: its first-call costs are in the paper numbers.
    assert seen["calls_before"] == 0 and model.calls > 3
    assert seen["threads"] == default_threads == rec["latency_paper"]["num_threads"]
    assert rec["latency_paper"]["runs"] == 3 and rec["latency_paper"]["data_parallel"] is False
    assert rec["latency_correct"]["num_threads"] == 1


def test_authors_data_parallel_wrapper_only_on_the_gpu():
    model = TinyNet()
    assert isinstance(measure.wrap_like_authors(model, "cuda", True), nn.DataParallel)
    assert measure.wrap_like_authors(model, "cuda", False) is model
    assert measure.wrap_like_authors(model, "cpu", True) is model  # the CPU run of main.py used the bare model
    # The wrapper computes the same function (on a CPU-only machine it calls the module directly).
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(nn.DataParallel(model)(x), model(x))


def test_paper_examples_are_transformed_one_at_a_time(tmp_path):
    from cnnrepro.data import compact, sources

    data = tmp_path / "mnist.pt"
    compact.write_compact(sources.make_synthetic("mnist", 20, 30), data, {"dataset": "mnist"})
    settings = {"input": {"size": 64, "rgb": True, "mean": [0.5] * 3, "std": [0.25] * 3}, "augment": "none",
                "speed": {"channels_last": False}}
    examples = trained.PaperExamples(settings, data, 25)
    batches = list(examples)
    assert len(examples) == 25 and len(batches) == 25 and examples.shape_chw == (3, 64, 64)
    assert all(b.shape == (1, 3, 64, 64) and b.dtype == torch.float32 for b in batches)
    assert examples.images.dtype == torch.uint8  # what is held between examples is the compact uint8 test set


# ----------------------------------------------------------------------------- the workflow's job (cnnrepro.bench.job)

_KEY = {"study": "s", "dataset": "mnist", "model": "cnn", "freeze": "none"}  # what the workflow passes
_RUN = {**_KEY, "run_id": "s/mnist/cnn/none/base/seed0"}


def test_a_gpu_job_on_a_machine_without_a_gpu_never_imports_torch(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "gpu.json"
    code = ("import sys; from cnnrepro.bench.job import benchmark_job; "
            f"benchmark_job({_KEY!r}, {_RUN!r}, 'no-weights.pt', 'no-data.pt', 'gpu', {{}}, {str(out)!r}); "
            "print('torch' in sys.modules)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever this machine has
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr
    expected = measure.not_measured_record("not measured: no CUDA device", "gpu")
    assert json.loads(out.read_text()) == {**expected, **_KEY, "weights_of_run": _RUN["run_id"]}


def test_the_gpu_record_without_torch_equals_the_one_torch_decides(tmp_path, monkeypatch):
    from cnnrepro.bench import job as bench_job

    monkeypatch.setattr(bench_job, "no_gpu_on_this_machine", lambda: True)
    cheap = bench_job.benchmark_job(_KEY, _RUN, "w.pt", "d.pt", "gpu", {}, tmp_path / "cheap.json")
    monkeypatch.setattr(bench_job, "no_gpu_on_this_machine", lambda: False)  # "maybe a GPU": torch is asked
    monkeypatch.setattr(measure.devices, "cuda_available", lambda: False)
    asked = bench_job.benchmark_job(_KEY, _RUN, "w.pt", "d.pt", "gpu", {}, tmp_path / "asked.json")
    assert cheap == asked
    assert (tmp_path / "cheap.json").read_bytes() == (tmp_path / "asked.json").read_bytes()


def test_no_gpu_is_decided_from_the_environment_and_the_driver_device_files(monkeypatch):
    from cnnrepro.bench import job as bench_job

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert bench_job.no_gpu_on_this_machine()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(bench_job.sys, "platform", "linux")
    monkeypatch.setattr(bench_job.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    assert not bench_job.no_gpu_on_this_machine()  # an NVIDIA driver: torch decides
    monkeypatch.setattr(bench_job.os.path, "exists", lambda path: False)
    assert bench_job.no_gpu_on_this_machine()
    monkeypatch.setattr(bench_job.sys, "platform", "win32")  # no device files to look at: torch decides
    assert not bench_job.no_gpu_on_this_machine()
