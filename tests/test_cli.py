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
