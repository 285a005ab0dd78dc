"""The plan from a gpu-check file (cnnrepro.plan.calibration): measured step times replace the assumed rate, models
not timed take the fitted rate, and files that do not fit are refused with the field and the fix."""

import csv
import io
import json
import math

import pytest

from cnnrepro import cli
from cnnrepro import config as cfg
from cnnrepro.plan import calibration, memory, rates, runs
from cnnrepro.plan.cost import settings_cost, stages

FCNN = "seed003_kmnist_fcnn_cnn/kmnist/fcnn/none/augment-none/seed42"
RESNET = "seed001_resnet_mobilenet_cifar10/cifar10/resnet18_cifar/none/base/seed0"
VGG = "seed002_squeezenet_dsc/cifar10/vgg19/none/base/seed0"
SQUEEZE = "seed004_squeezenet_transfer_cifar10/cifar10/squeezenet1_1/none/batch_size-{}_epochs-50/seed0"
# The made-up device: 20 TFLOP/s sustained, 8 us per op; seed 003's FCNN is bound by launches there, ResNet18 by
# arithmetic, so the two steps pin both figures.
RATE = rates.Rate("h100", "made up", 20e12, 8e-6, "")


@pytest.fixture(scope="module")
def configured():
    from tests.conftest import REPO

    config = cfg.validate(cfg.load_yaml(REPO / "config.yaml"))
    return config, cfg.settings_by_run(config)


def step_cost(settings: dict) -> tuple[int, int]:
    """(FLOPs, ops) of the run's whole training step, as gpu-check times it (nothing cached)."""
    cost = settings_cost(settings)
    per_image, ops = runs.train_step_cost(cost, stages(settings, cost), cached=False)
    return per_image * settings["recipe"]["batch_size"], ops


def entry(settings: dict, seconds: float | None = None, switches=(), peak=None) -> dict:
    """A step_times entry of gpu-check for this run's step; ``seconds`` None: the made-up device's time."""
    flops, ops = step_cost(settings)
    return {"run_id": settings["run_id"], "model": settings["model"], "freeze": settings["freeze"],
            "batch_size": settings["recipe"]["batch_size"], "switches": list(switches), "has_conv": True,
            "ms_median": 1e3 * (seconds if seconds is not None else rates.step_time(flops, ops, RATE)),
            "flops_per_step": flops, "ops_per_step": ops, "peak_memory_bytes": peak}


def gpu_check_file(tmp_path, entries, name="NVIDIA H100 80GB HBM3", fmt=1, kind="cuda"):
    path = tmp_path / "gpu-check.json"
    path.write_text(json.dumps({"format": fmt, "created": "2026-12-07T00:00:00+00:00", "passed": True,
                                "device": {"kind": kind, "name": name, "capability": "9.0",
                                           "memory_bytes": 80 * 2**30}, "step_times": entries}))
    return path


def measured_plans(configured, path, scale=1.0):
    config, by_run = configured
    measured = calibration.measured(calibration.load(path, "h100"), config["speed"], rates.gpu_rate("h100"))
    plans = runs.plan_runs(config, runs.configured_savings(config), by_run)
    return measured, {p.run_id: p for p in measured.apply_all(plans, config, by_run)}


def train_pass(plan):
    return next(p for p in plan.passes if p.what == "train")


def test_the_fit_recovers_the_rate_behind_the_steps_and_doubles_with_them():
    points = [(4.6e9, 60, rates.step_time(4.6e9, 60, RATE)), (2.1e11, 200, rates.step_time(2.1e11, 200, RATE)),
              (9e11, 500, rates.step_time(9e11, 500, RATE))]
    flops, per_op = calibration.fit_rate(points, rates.gpu_rate("h100"))
    assert (flops, per_op) == (pytest.approx(20e12), pytest.approx(8e-6))
    slower = calibration.fit_rate([(f, o, 2 * t) for f, o, t in points], rates.gpu_rate("h100"))
    assert slower == (pytest.approx(10e12), pytest.approx(16e-6))
    # Steps all bound by arithmetic say only that c is below a bound: the assumed per-op cost stands.
    compute_only = [(2.1e11, 200, 2.1e11 / 20e12), (9e11, 500, 9e11 / 20e12)]
    assert calibration.fit_rate(compute_only, rates.gpu_rate("h100")) == (pytest.approx(20e12),
                                                                           pytest.approx(rates.GPU_SECONDS_PER_OP))


def test_measured_runs_take_the_measured_step_and_the_rest_the_fitted_rate(configured, tmp_path):
    config, by_run = configured
    peak = 3 * 2**30
    path = gpu_check_file(tmp_path, [entry(by_run[FCNN]), entry(by_run[RESNET], peak=peak)])
    measured, plans = measured_plans(configured, path)
    assert (measured.rate.flops_per_second, measured.rate.seconds_per_op) == (pytest.approx(20e12), pytest.approx(8e-6))
    assert "measured by cnnrepro gpu-check" in measured.rate.basis and measured.rate.memory_gib == 80
    resnet = plans[RESNET]
    step = json.loads(path.read_text())["step_times"][1]["ms_median"] / 1e3
    assert resnet.basis == "measured" and train_pass(resnet).seconds(measured.rate) == pytest.approx(
        train_pass(resnet).steps * step)
    # The measured peak plus the uint8 CIFAR-10 splits on the device, as the plan counts them.
    assert resnet.device_bytes == peak + memory.device_data_bytes(by_run[RESNET], cfg.data_settings(config, "cifar10"))
    assert peak + 60_000 * 3 * 32 * 32 <= resnet.device_bytes < peak + 2**30
    # Seed 003's augmented FCNN trains the same step: measured too. VGG19 was not timed: the fitted rate.
    assert plans["seed003_kmnist_fcnn_cnn/kmnist/fcnn/none/augment-kmnist10x/seed42"].basis == "measured"
    vgg = train_pass(plans[VGG])
    assert plans[VGG].basis == "fitted" and vgg.step_seconds is None
    assert vgg.seconds(measured.rate) == pytest.approx(max(vgg.flops / 20e12, vgg.steps * vgg.ops_per_step * 8e-6))
    # Seed 004's head-only runs train on cached features, which gpu-check does not time: fitted.
    assert plans[SQUEEZE.format(250).replace("/none/", "/head/")].basis == "fitted"


def test_twice_the_measured_time_doubles_every_estimate_and_leaves_the_start_up(configured, tmp_path):
    config, by_run = configured
    timed = [by_run[FCNN], by_run[RESNET], by_run[SQUEEZE.format(250)]]
    slow = [{**e, "ms_median": 2 * e["ms_median"]} for e in (entry(s) for s in timed)]
    fast_rate, fast = measured_plans(configured, gpu_check_file(tmp_path, [entry(s) for s in timed]))
    slow_rate, slow_plans = measured_plans(configured, gpu_check_file(tmp_path, slow))
    startup = rates.JOB_STARTUP_SECONDS
    for run_id, plan in fast.items():
        before, after = plan.seconds(fast_rate.rate) - startup, slow_plans[run_id].seconds(slow_rate.rate) - startup
        assert after == pytest.approx(2 * before), run_id
    assert sum(p.seconds(slow_rate.rate) for p in slow_plans.values()) > \
        1.9 * sum(p.seconds(fast_rate.rate) for p in fast.values()) - startup * len(fast)
    # Seed 004's batch-500 runs scale the batch-250 measurement by the fitted rate's ratio of the two steps.
    big = fast[SQUEEZE.format(500)]
    assert big.basis == "scaled" and fast[SQUEEZE.format(250)].basis == "measured"
    small_step = json.loads(gpu_check_file(tmp_path, [entry(by_run[SQUEEZE.format(250)])]).read_text())
    flops, ops = step_cost(by_run[SQUEEZE.format(250)])
    ratio = train_pass(big).step_estimate(fast_rate.rate) / rates.step_time(flops, ops, fast_rate.rate)
    assert train_pass(big).step_seconds == pytest.approx(small_step["step_times"][0]["ms_median"] / 1e3 * ratio)


def test_files_that_do_not_fit_are_refused_naming_the_field_and_the_fix(configured, tmp_path):
    config, by_run = configured
    steps = [entry(by_run[RESNET])]
    with pytest.raises(calibration.CalibrationError, match=r"'format' is 2.*format 1"):
        calibration.load(gpu_check_file(tmp_path, steps, fmt=2), "h100")
    with pytest.raises(calibration.CalibrationError, match=r"'device.name'.*A100.*--device a100"):
        calibration.load(gpu_check_file(tmp_path, steps, name="NVIDIA A100-SXM4-40GB"), "h100")
    with pytest.raises(calibration.CalibrationError, match=r"L40S.*rates.DEVICES"):
        calibration.load(gpu_check_file(tmp_path, steps, name="NVIDIA L40S"), "h100")
    with pytest.raises(calibration.CalibrationError, match=r"--device cpu"):
        calibration.load(gpu_check_file(tmp_path, steps, name="AMD EPYC", kind="cpu"), "t4")
    faithful_only = calibration.load(gpu_check_file(tmp_path, steps), "h100")
    with pytest.raises(calibration.CalibrationError, match=r"'step_times'.*tf32.*it timed faithful"):
        calibration.measured(faithful_only, {**config["speed"], "tf32": True}, rates.gpu_rate("h100"))
    # The same file with a TF32 step plans a TF32 configuration.
    tf32 = calibration.load(gpu_check_file(tmp_path, [*steps, entry(by_run[RESNET], switches=["tf32"])]), "h100")
    assert calibration.measured(tf32, {**config["speed"], "tf32": True}, rates.gpu_rate("h100")).steps[0].switches \
        == {"tf32"}


def test_plan_with_a_calibration_says_each_runs_and_studys_basis(configured, tmp_path, capsys, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    _, by_run = configured
    path = gpu_check_file(tmp_path, [entry(by_run[FCNN]), entry(by_run[RESNET])])
    assert cli.main(["plan", "--device", "h100", "--format", "csv", "--calibration", str(path)]) == 0
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows[RESNET]["basis"] == "measured" and rows[VGG]["basis"] == "fitted"
    assert cli.main(["plan", "--device", "t4", "--calibration", str(path)]) == 2
    assert "'device.name'" in capsys.readouterr().err
    assert cli.main(["plan", "--device", "h100", "--calibration", str(path)]) == 0
    out = capsys.readouterr().out
    assert "measured by cnnrepro gpu-check" in out and calibration.BASIS_LEGEND in out
    seed003 = next(line for line in out.splitlines() if line.startswith("seed003_kmnist_fcnn_cnn "))
    assert seed003.rstrip().endswith("measured 2, fitted 3")
    assert math.isfinite(float(rows[VGG]["seconds"]))


def test_a_measurement_that_equals_the_assumptions_leaves_the_plan_as_it_is(configured, tmp_path):
    config, by_run = configured
    assumed = rates.gpu_rate("h100")
    timed, seen = [], set()
    for settings in by_run.values():  # one run per (study, model, freeze), as gpu-check times them
        if (settings["study"], settings["model"], settings["freeze"]) not in seen:
            seen.add((settings["study"], settings["model"], settings["freeze"]))
            flops, ops = step_cost(settings)
            timed.append(entry(settings, rates.step_time(flops, ops, assumed)))
    measured, plans = measured_plans(configured, gpu_check_file(tmp_path, timed))
    assert len(timed) == 16 and measured.rate.flops_per_second == pytest.approx(assumed.flops_per_second)
    assert measured.rate.seconds_per_op == pytest.approx(assumed.seconds_per_op)
    for plan in runs.plan_runs(config, runs.configured_savings(config), by_run):
        # A measured step counts an epoch's last, smaller batch as a whole one: within 0.1 %.
        assert plans[plan.run_id].seconds(measured.rate) == pytest.approx(plan.seconds(assumed), rel=1e-3), \
            plan.run_id
    assert {p.basis for p in plans.values()} == {"measured", "scaled", "fitted"}
