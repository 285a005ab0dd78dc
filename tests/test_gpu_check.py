"""cnnrepro gpu-check on the CPU: every step end to end (its CPU profile), and its parts: the timed step, the sweep's
budget, the settings it times, the bitwise weight comparison, the summary and the command line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cnnrepro import cli
from cnnrepro import config as cfg
from cnnrepro.gpucheck import check, summary, timing, training
from cnnrepro.gpucheck.profiles import CPU, GPU, MIN_SAMPLES
from cnnrepro.plan import calibration, rates, runs
from cnnrepro.plan.calibration import FILE_NAME
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("torch_globals_restored")
CPU_DEVICE = torch.device("cpu")
TINY = CPU.__class__(**{**CPU.__dict__, "warmup_steps": 1, "steps_per_sample": 1, "timed_samples": 3,
                        "timed_seconds": 0.0})


@pytest.fixture(scope="module")
def configured():
    config = cfg.validate(cfg.load_yaml(REPO / "config.yaml"))
    return config, cfg.settings_by_run(config)


@pytest.fixture(scope="module")
def settings_by_run(configured):
    return configured[1]


@pytest.mark.slow
def test_gpu_check_on_the_cpu_runs_every_step_and_the_plan_reads_its_file(tmp_path, configured):
    out = tmp_path / "gc"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "cnnrepro.cli", "gpu-check", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[gpu-check" in done.stderr and "smoke: passed" in done.stderr  # progress on stderr
    record = json.loads((out / FILE_NAME).read_text())
    assert record["format"] == 1 and record["passed"] is True and record["device"]["kind"] == "cpu"
    assert record["device"]["plan_device"] == "cpu" and record["torch_version"] == torch.__version__
    assert {name: step["status"] for name, step in record["steps"].items()} == dict.fromkeys(check.STEPS, "passed")
    steps = {name: step["details"] for name, step in record["steps"].items()}
    assert steps["smoke"]["runs"] == steps["smoke"]["runs_ok"] >= 1 and steps["smoke"]["devices"] == ["cpu"]
    assert steps["determinism"]["identical"] and steps["determinism"]["tensors"] > 0
    resume = steps["resume"]
    assert resume["sigint_sent"] and resume["interrupted_status"] != 0 and resume["said_resuming"]
    assert 1 <= resume["checkpoint_epoch_at_interrupt"] < resume["epochs"] and resume["identical"]
    assert steps["bench"]["latency_correct_median_ms"] > 0 and (out / "bench" / "cpu.json").is_file()
    times = record["step_times"]
    assert {(e["freeze"], e["setting"]) for e in times} >= {("none", "faithful"), ("head", "faithful"),
                                                           ("head", "channels_last")}
    for entry in times:
        assert entry["ms_median"] > 0 and entry["ms_min"] <= entry["ms_median"] <= entry["ms_max"]
        assert entry["steps_timed"] >= MIN_SAMPLES and entry["flops_per_step"] > 0 and entry["ops_per_step"] > 0
        assert entry["batch_size"] <= CPU.batch_cap and entry["peak_memory_bytes"] is None
    assert {s["setting"] for s in steps["step_times"]["skipped"]} == {"compile"}  # the CPU profile leaves it out
    page = (out / check.SUMMARY_NAME).read_text()
    assert page.startswith("# gpu-check on ") and ": PASSED" in page and "| faithful |" in page
    assert "cnnrepro plan --device cpu --calibration" in page
    # The plan reads the file: the CPU's measurement for --device cpu (timed at a capped batch: scaled), refused for
    # a GPU.
    config, by_run = configured
    measured = calibration.measured(calibration.load(out / FILE_NAME, "cpu"), config["speed"],
                                    rates.reference_cpu_rate(config["train_threads"]))
    plans = measured.apply_all(runs.plan_runs(config, runs.configured_savings(config), by_run), config, by_run)
    assert {p.basis for p in plans} == {"scaled", "fitted"}
    with pytest.raises(calibration.CalibrationError, match="--device cpu"):
        calibration.load(out / FILE_NAME, "h100")


def test_a_timed_step_trains_the_runs_trainable_part_with_its_optimizer(settings_by_run):
    settings = timing.representative_runs(settings_by_run, CPU)
    head = next(s for s in settings if s["freeze"] == "head")
    model = timing.build_run_model(head, pretrained=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = timing.make_optimizer([p for p in model.parameters() if p.requires_grad], head["recipe"])
    x, y = torch.randn(4, head["in_channels"], 48, 48), torch.randint(10, (4,))
    timing.train_step(model, x, y, optimizer, timing.make_loss(head["recipe"]["loss"], 10), timing.FAITHFUL,
                      CPU_DEVICE)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("classifier") for name in changed)  # the new head only
    timed = timing.time_steps(head, timing.FAITHFUL, CPU_DEVICE, TINY)
    assert timed["samples"] == 3 and 0 < timed["ms_min"] <= timed["ms_median"] <= timed["ms_max"]
    assert timed["ms_iqr"] >= 0 and timed["peak_memory_bytes"] is None
    assert timing.peak_memory(CPU_DEVICE) == (None, "not measured on the CPU")


def test_compile_wraps_the_model_it_times(settings_by_run, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    fcnn = next(s for s in timing.representative_runs(settings_by_run, CPU) if s["freeze"] == "none")
    timing.time_steps(fcnn, {**timing.FAITHFUL, "compile": True}, CPU_DEVICE, TINY)
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)


def test_only_settings_that_change_something_on_the_device_are_timed(settings_by_run):
    runs = timing.representative_runs(settings_by_run, CPU)
    sweep = timing.Sweep([], [], [])
    order = timing._plan_measurements(runs, CPU_DEVICE, CPU, sweep)
    names = [(settings["model"], settings["freeze"], setting) for settings, setting, _, _ in order]
    assert [setting for *_, setting in names[:len(runs)]] == ["faithful"] * len(runs)  # every run faithful first
    # On a CPU only channels_last (to a model with convolutions) and the fused optimizer (where torch has a fused
    # step of the recipe's optimizer: Adam, not Adadelta) apply; fast.yaml's switches together are those two.
    assert {setting for *_, setting in names} == {"faithful", "channels_last", "fused_optimizer", "fast"}
    assert ("fcnn", "none", "channels_last") not in names and ("fcnn", "none", "fused_optimizer") not in names
    assert {item["setting"] for item in sweep.not_applicable} == {"amp_bf16", "tf32", "cudnn_benchmark", "fast",
                                                                 "channels_last", "fused_optimizer"}
    assert [item["setting"] for item in sweep.skipped] == ["compile"] * len(runs)
    # Every (study, model, freeze) on a GPU: the five studies' 16, at their own batch sizes.
    everything = timing.representative_runs(settings_by_run, GPU)
    assert len(everything) == 16 and {s["recipe"]["batch_size"] for s in everything} == {512, 128, 250}


def test_the_sweep_skips_what_would_run_past_the_budget_and_says_why(settings_by_run, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing, "time_steps", lambda settings, switches, device, profile: (
        now.__setitem__(0, now[0] + 4.0) or {"ms_median": 1.0, "steps_timed": 3}))
    runs = timing.representative_runs(settings_by_run, CPU)
    done = timing.sweep(runs, CPU_DEVICE, CPU, deadline=10.0, progress=lambda line: None, clock=lambda: now[0])
    # The first measurement is expected to take 5 s: two fit before the deadline, then 2 s are left.
    assert [e["setting"] for e in done.entries] == ["faithful", "faithful"]
    over = [item for item in done.skipped if item["reason"].startswith("over the budget")]
    planned = timing._plan_measurements(runs, CPU_DEVICE, CPU, timing.Sweep([], [], []))
    assert len(over) == len(planned) - 2 and "2 s left" in over[0]["reason"]


def test_weights_are_compared_bit_for_bit(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3)}, a)
    torch.save({"w": torch.tensor([-0.0, 1.0]), "n": torch.tensor(3)}, b)  # equal as numbers, not as bits
    assert training.weight_differences(a, a) == []
    assert [d.split()[0] for d in training.weight_differences(a, b)] == ["w"]


def test_the_summary_names_a_failed_step_and_what_it_found(settings_by_run):
    record = check.new_record(CPU_DEVICE, CPU, 480.0, "cnnrepro gpu-check --device cpu")
    record["steps"] = {"determinism": {"status": "failed", "seconds": 3.0, "details": {
        "run_id": "r", "identical": False, "tensors": 8, "differing": ["fc.weight (max |difference| 1e-07)"]}},
        "smoke": {"status": "skipped", "seconds": 0.0, "details": {"reason": "not in --steps"}}}
    assert summary.render(record).startswith("# gpu-check on ") and "in progress" in summary.render(record)
    record.update(passed=False, failed_steps=["determinism"])
    page = summary.render(record)
    assert "FAILED: determinism" in page and "DIFFERENT: fc.weight" in page and "not run (not in --steps)" in page


def test_the_command_refuses_unknown_steps_and_a_missing_gpu(capsys, monkeypatch, tmp_path):
    from cnnrepro.runtime import device

    monkeypatch.chdir(REPO)
    assert cli.main(["gpu-check", "--device", "cpu", "--steps", "smoke,warp", "--out", str(tmp_path)]) == 2
    assert "unknown warp" in capsys.readouterr().err
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert cli.main(["gpu-check", "--out", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().err and not (tmp_path / FILE_NAME).exists()
    # A folder of something else is not replaced.
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files but no gpu-check.json"):
        check.run_check({}, {}, "cpu", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_correctness_step_fails_the_check_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "prepare", lambda *args: "run")
    monkeypatch.setattr(training, "determinism", lambda run, timeout, progress: (False, {"error": "made up"}))
    monkeypatch.setattr(training, "resume", lambda run, timeout, progress: 1 / 0)
    assert check.run_check({}, {}, "cpu", tmp_path, ("determinism", "resume")) == 1
    record = json.loads((tmp_path / FILE_NAME).read_text())
    assert record["passed"] is False and record["failed_steps"] == ["determinism", "resume"]
    assert record["steps"]["resume"]["details"]["error"] == "ZeroDivisionError: division by zero"
    assert record["steps"]["smoke"]["status"] == "skipped"
    page = (tmp_path / check.SUMMARY_NAME).read_text()
    assert "FAILED: determinism, resume" in page and "**made up**" in page
