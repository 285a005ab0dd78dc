import csv
import io

from cnnrepro import cli


def test_models_csv_lists_counts_per_model_dataset_freeze(capsys, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    assert cli.main(["models", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert set(rows[0]) == {"model", "dataset", "freeze", "params", "trainable_params"}
    got = {(r["model"], r["dataset"], r["freeze"]): (int(r["params"]), int(r["trainable_params"])) for r in rows}
    assert got[("squeezenet", "cifar100", "none")] == (792988, 792988)
    assert got[("resnet50", "mnist", "head")][1] == 20490
    assert got[("squeezenet1_1", "cifar10", "last_two_fire_and_head")] == (727626, 391306)
    assert len(got) == 20


def test_check_reports_config_errors(tmp_path, capsys, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: tpu\n")
    assert cli.main(["--configfile", str(bad), "check"]) == 2
    assert "'device'" in capsys.readouterr().err


def test_plan_prints_every_run_each_study_and_the_total_with_and_without_savings(capsys, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    assert cli.main(["plan", "--device", "h100"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H100" in out and "calibrated on seed 000's T4 times" in out
    assert "596 (authors)" in out and "200 (cap)" in out  # seed 003's observed stop, seed 002's cap
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1] == "38"
    for column in ("PFLOP_none", "time_none", "PFLOP_config", "time_all"):
        assert column in out
    assert cli.main(["plan", "--device", "t4", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 38 and "basis" not in rows[0]  # a basis only with --calibration (tests/test_calibration.py)
    by_run = {r["run"]: r for r in rows}
    vgg = by_run["seed002_squeezenet_dsc/cifar10/vgg19/none/base/seed0"]
    squeeze = by_run["seed002_squeezenet_dsc/cifar10/squeezenet/none/base/seed0"]
    assert float(vgg["TFLOP"]) > 5 * float(squeeze["TFLOP"]) and int(vgg["seconds"]) > int(squeeze["seconds"])
    assert int(vgg["mem_mb"]) > 1500


def test_plan_on_the_cpu_measures_this_machine(capsys, monkeypatch):
    from cnnrepro.plan import rates, runs
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    measured = []

    def calibrate(threads, seconds=1.5):
        measured.append(threads)
        return rates.Rate("cpu", "test CPU", 50e9, 2e-5, "measured here: 50 GFLOP/s (test)")

    monkeypatch.setattr(runs, "calibrate_cpu", calibrate)
    assert cli.main(["--configfile", "presets/smoke.yaml", "plan", "--device", "cpu"]) == 0
    assert measured == [1]  # the smoke preset's train_threads
    assert "measured here: 50 GFLOP/s" in capsys.readouterr().out
