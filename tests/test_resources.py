"""Memory requests come from a formula over what a job holds, and the benchmark never holds a float test set."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnrepro import config as cfg
from cnnrepro.plan import memory, resources


@pytest.fixture
def settings(raw_config):
    config = cfg.validate(raw_config)
    return config, cfg.settings_by_run(config)


def test_memory_grows_with_what_the_job_holds(settings):
    config, by_run = settings
    plain = by_run["seed003_kmnist_fcnn_cnn/kmnist/fcnn/none/augment-none/seed42"]
    expanded = by_run["seed003_kmnist_fcnn_cnn/kmnist/fcnn/none/augment-kmnist10x/seed42"]
    data = cfg.data_settings(config, "kmnist")
    # Seed 003's 10 augmented copies of 60,000 28x28 images: ~470 MB more to hold.
    assert memory.train_mem_mb(expanded, data) - memory.train_mem_mb(plain, data) > 1.5 * 400
    small = {**data, "source": "synthetic", "synthetic_train": 256, "synthetic_test": 128}
    assert memory.train_mem_mb(plain, small) < memory.train_mem_mb(plain, data)
    assert memory.dataset_bytes("kmnist", data) == 70_000 * 28 * 28
    assert memory.dataset_bytes("kmnist", {**data, "subsample_train": 5000}) == 15_000 * 28 * 28


def test_activations_count_in_host_memory_only_when_training_on_the_cpu(settings):
    from cnnrepro.plan import memory

    config, by_run = settings
    seed000 = by_run["seed000_resnet_mnist/mnist/resnet50/head/base/seed0"]
    data = cfg.data_settings(config, "mnist")
    on_gpu = memory.train_mem_mb({**seed000, "device": "auto"}, data)
    on_cpu = memory.train_mem_mb({**seed000, "device": "cpu"}, data)
    activations = memory.activation_bytes(seed000)
    assert on_cpu - on_gpu == pytest.approx(memory.SAFETY * activations / 2**20, abs=1)
    assert on_cpu > on_gpu + 3_000  # batch 512 at 224 px: two 3 MB feature maps per image alive at once
    # A frozen backbone keeps nothing for the backward pass; training all of it keeps every op output.
    everything = {**seed000, "trainable": "all", "freeze": "none"}
    assert memory.activation_bytes(everything) > 5 * activations
    assert memory.bench_mem_mb(seed000, data, {**config["benchmark"], "batch_sizes": [1, 128]}) > \
        memory.bench_mem_mb(seed000, data, {**config["benchmark"], "batch_sizes": [1]})


def test_runtime_requests_follow_the_plan_with_a_margin(settings):
    from cnnrepro.plan import rates, runs

    config, by_run = settings
    savings = runs.configured_savings(config)
    plans = {p.run_id: p for p in runs.plan_runs(config, savings, by_run)}
    vgg = "seed002_squeezenet_dsc/cifar10/vgg19/none/base/seed0"
    squeeze = "seed002_squeezenet_dsc/cifar10/squeezenet/none/base/seed0"
    minutes = {run: resources.train_runtime_min(plans[run], by_run[run], 4) for run in (vgg, squeeze)}
    t4 = rates.gpu_rate("t4")
    assert minutes[vgg] == pytest.approx(resources.RUNTIME_SAFETY * plans[vgg].seconds(t4) / 60, abs=1)
    assert minutes[vgg] > 3 * minutes[squeeze] > 3 * resources.MIN_RUNTIME_MIN
    # A CPU job is estimated at the reference CPU rate with its own threads: more threads, less time.
    on_cpu = {**by_run[squeeze], "device": "cpu"}
    assert resources.train_runtime_min(plans[squeeze], on_cpu, 1) > resources.train_runtime_min(plans[squeeze],
                                                                                                on_cpu, 8)
    bench = config["benchmark"]
    assert resources.bench_runtime_min(by_run[vgg], {**bench, "paper_runs": 10**7}, "cpu") > \
        resources.bench_runtime_min(by_run[vgg], bench, "cpu") >= resources.MIN_RUNTIME_MIN


@pytest.mark.slow
def test_preparing_seed000s_10000_paper_examples_at_224_px_stays_under_1_gib(tmp_path):
    # Seed 000 times all 10,000 MNIST test images at batch 1, at 224 px in RGB: as one float tensor that is
    # 10,000 x 3 x 224 x 224 x 4 bytes = 5.6 GiB. Taken one at a time from the uint8 set, preparing them costs
    # little. Measured in a fresh process as the growth of its peak RSS (VmHWM, reset through clear_refs) over
    # the RSS before, so the interpreter and torch themselves (~0.5 GiB, varying by machine) do not count.
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from cnnrepro.bench.trained import PaperExamples
        from cnnrepro.data.compact import write_compact
        from cnnrepro.data.sources import make_synthetic

        def status(field):
            line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
            return int(line.split()[1]) * 1024

        data = sys.argv[1]
        write_compact(make_synthetic("mnist", 10, 10000), data, {"dataset": "mnist"})
        settings = {"input": {"size": 224, "rgb": True, "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225]}, "augment": "none", "speed": {"channels_last": False}}
        Path("/proc/self/clear_refs").write_text("5")
        before = status("VmRSS:")
        examples = PaperExamples(settings, data, 10000)
        seen = sum(1 for x in examples if x.shape == (1, 3, 224, 224))
        print(json.dumps({"seen": seen, "growth": status("VmHWM:") - before}))
    """)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "mnist.pt")], capture_output=True, text=True,
                         check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seen"] == 10_000
    assert 0 < result["growth"] < 2**30, f"peak RSS grew by {result['growth'] / 2**20:.0f} MiB"
