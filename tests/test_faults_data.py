"""Bad data files fail with the file, the row or key, and what was expected (issue "Fault tolerance proved by a
suite", item 5): paper-table CSVs at the config check (before any job) and again before aggregation reads its
inputs; npz files where the prepare_dataset job reads them."""

import numpy as np
import pytest

from cnnrepro import config as cfg
from cnnrepro import startup
from cnnrepro.data.catalog import DatasetCorrupt
from cnnrepro.data.prepare import prepare
from cnnrepro.data.sources import load_npz
from cnnrepro.tables import specs
from tests.conftest import data_options
from tests.test_aggregate import run_aggregate, write_inputs

GOOD_CSV = "model,acc,size_MB\nCNN,99.10,1.08\nFCNN,97.80,\n"  # an empty cell: the paper printed "-"


def study_config(csv_path, **table) -> dict:
    """A one-study config whose only paper table is ``csv_path``."""
    entry = {"file": str(csv_path), "match": {"model": {"CNN": {"model": "cnn"}, "FCNN": {"model": "fcnn"}}},
             "metrics": {"acc": "test_top1_pct", "size_MB": "size_MB_paper_unit"}, **table}
    study = {"datasets": ["mnist"], "models": ["cnn", "fcnn"], "input": {"normalization": "mnist"},
             "recipe": {"lr": 0.1, "batch_size": 8, "epochs": 1}, "tables": [entry]}
    return {"studies": {"s": study}, "device": "cpu"}


def config_error(config: dict) -> str:
    with pytest.raises(cfg.ConfigError) as error:
        startup.check(config)
    return str(error.value)


def test_a_good_table_with_an_empty_cell_passes(tmp_path):
    (tmp_path / "t.csv").write_text(GOOD_CSV)
    config = cfg.validate(study_config(tmp_path / "t.csv"))
    specs.check_paper_tables(config)
    assert cfg.settings_by_run(config)


@pytest.mark.parametrize("csv, words", [
    # a match key column absent
    ("name,acc,size_MB\nCNN,99.10,1.08\n",
     ["'studies.s.tables[0].match.model'", "'model' is not a column of", "t.csv", "its columns: name, acc, size_MB"]),
    # every metric column absent
    ("model,accuracy\nCNN,99.10\n",
     ["'studies.s.tables[0].metrics'", "none of acc, size_MB is a column of", "t.csv", "its columns: model, accuracy"]),
    # a non-numeric value in a metric column
    ("model,acc,size_MB\nCNN,99.10,1.08\nFCNN,n/a,1.10\n",
     ["'studies.s.tables[0].file'", "t.csv, line 3 (model=FCNN), column 'acc'", "'n/a' is not a number",
      "or is empty where the paper prints '-'"]),
    ("model,acc,size_MB\nCNN,99.10%,1.08\n", ["t.csv, line 2 (model=CNN), column 'acc'", "'99.10%' is not a number"]),
    ("model,acc,size_MB\nCNN,99.10,\"1,080\"\n", ["line 2 (model=CNN), column 'size_MB'", "'1,080' is not a number",
                                                  "no thousands separator"]),
    # a duplicated key row
    ("model,acc,size_MB\nCNN,99.10,1.08\nFCNN,97.80,2.00\nCNN,98.00,1.08\n",
     ["'studies.s.tables[0].file'", "t.csv, line 4 (model=CNN) repeats line 2 (model=CNN)",
      "every key column (model) has the same value", "one row per printed observation"]),
    # a file that pandas would read differently from what it shows
    ("model,acc,size_MB\nCNN,99.10\n",
     ["'studies.s.tables[0].file'", "t.csv, line 2: 2 cells (CNN,99.10), expected 3"]),
    ("model,acc,acc\nCNN,99.10,1.0\n", ["'studies.s.tables[0].file'", "repeats column 'acc'"]),
    ("model,acc,size_MB\n", ["'studies.s.tables[0].file'", "has a header but no rows"]),
    ("", ["'studies.s.tables[0].file'", "t.csv is empty"]),
    ("model,acc,size_MB,notes\nCNN,99.10,1.08,x\n", ["'studies.s.tables[0].file'", "has a column 'notes'",
                                                      "a name the output uses"]),
], ids=["match-column-missing", "metric-columns-missing", "non-numeric-n/a", "non-numeric-percent",
        "non-numeric-thousands", "duplicate-key-row", "short-row", "repeated-column", "no-rows", "empty-file",
        "output-column-clash"])
def test_a_bad_paper_table_is_a_config_error_naming_file_row_and_expectation(tmp_path, csv, words):
    (tmp_path / "t.csv").write_text(csv)
    message = config_error(study_config(tmp_path / "t.csv"))
    assert message.startswith("config error at '"), message
    missing = [word for word in words if word not in message]
    assert not missing, f"{missing} not in: {message}"


def test_a_template_naming_a_class_the_study_does_not_have_is_a_config_error(tmp_path):
    (tmp_path / "t.csv").write_text("model,class,f1\nCNN,3,0.9\nCNN,macro avg,0.8\nCNN,10,0.7\n")
    config = study_config(tmp_path / "t.csv", match={"model": {"CNN": {"model": "cnn"}}},
                          metrics={"f1": "test_f1_by_class.{class}"})
    message = config_error(config)
    assert "'studies.s.tables[0].metrics.f1'" in message and "line 4 (model=CNN, class=10)" in message
    assert "'10' is not a class of test_f1_by_class: expected 0 .. 9 or 'macro avg'" in message


def test_a_shared_metrics_map_may_name_columns_only_some_of_its_tables_print(tmp_path):
    """Seed 002's rule: one map on tables that print different columns; a key no CSV of the map prints fails."""
    (tmp_path / "a.csv").write_text("model,acc,size_MB\nCNN,99.10,1.08\n")
    (tmp_path / "b.csv").write_text("model,acc\nFCNN,97.80\n")
    config = study_config(tmp_path / "a.csv")
    config["studies"]["s"]["tables"].append({**config["studies"]["s"]["tables"][0], "file": str(tmp_path / "b.csv")})
    startup.check(config)  # size_MB is a column of a.csv, whose table shares the map
    config = study_config(tmp_path / "a.csv", metrics={"acc": "test_top1_pct", "top5": "test_top5_pct"})
    config["studies"]["s"]["tables"].append({**config["studies"]["s"]["tables"][0], "file": str(tmp_path / "b.csv")})
    message = config_error(config)
    assert "'studies.s.tables[0].metrics.top5'" in message and "nor of any other CSV of the study" in message


def test_a_table_broken_after_start_up_fails_aggregation_before_it_reads_any_input(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(GOOD_CSV)
    config = cfg.validate(study_config(csv))
    metrics, bench = write_inputs(config, tmp_path)
    csv.write_text("model,acc,size_MB\nCNN,99.10,1.08\nCNN,97.80,1.08\n")  # edited while the runs trained
    with pytest.raises(ValueError, match=r"'studies.s.tables\[0\].file'.*t.csv, line 3 \(model=CNN\) repeats line 2"):
        run_aggregate(config, tmp_path, metrics, bench)
    assert not (tmp_path / "out" / "tables").exists()
    csv.write_text("model,acc,size_MB\nCNN,-,1.08\n")
    with pytest.raises(ValueError, match=r"t.csv, line 2 \(model=CNN\), column 'acc': '-' is not a number"):
        run_aggregate(config, tmp_path, metrics, bench)
    csv.write_text(GOOD_CSV)
    written = run_aggregate(config, tmp_path, metrics, bench)
    assert written["t.csv"].is_file()


# ----- npz files -----


def save_npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


GREY = np.zeros((10, 28, 28), np.uint8)
LABELS = np.arange(10, dtype=np.int64)


@pytest.mark.parametrize("dataset, x, y, words", [
    ("mnist", GREY.astype(np.float32), LABELS, ["x dtype is float32, expected uint8"]),
    ("mnist", np.zeros((10, 5), np.uint8), LABELS,
     ["x shape (10, 5) is not [N,28,28] or [N,28,28,1] or [N,1,28,28] for mnist"]),
    ("mnist", np.zeros((10, 32, 32), np.uint8), LABELS, ["x shape (10, 32, 32) is not [N,28,28]", "for mnist"]),
    ("cifar10", GREY, LABELS, ["x shape (10, 28, 28) is not [N,32,32,3] or [N,3,32,32] for cifar10"]),
    ("mnist", GREY, LABELS.reshape(5, 2), ["y shape (5, 2) is not [N]", "one class index per image"]),
    ("mnist", GREY, LABELS.astype(np.float32), ["y dtype is float32, expected integer class indices"]),
    ("mnist", GREY, LABELS[:9], ["10 images (x) but 9 labels (y)", "one label per image"]),
    ("mnist", GREY, LABELS + 3, ["y holds labels 3 .. 12, expected class indices 0 .. 9 for mnist"]),
], ids=["x-dtype", "x-2d", "x-image-size", "x-channels", "y-2d", "y-dtype", "counts", "labels"])
def test_a_bad_npz_names_the_file_the_array_and_what_was_expected(tmp_path, dataset, x, y, words):
    path = save_npz(tmp_path / "train.npz", x, y)
    test = save_npz(tmp_path / "test.npz", GREY if dataset == "mnist" else np.zeros((10, 32, 32, 3), np.uint8), LABELS)
    for call in (lambda: load_npz({"train": path}, dataset),
                 lambda: prepare(dataset, "npz", tmp_path, tmp_path / "out.pt",
                                 data_options(npz={"train": str(path), "test": str(test)}))):
        with pytest.raises(DatasetCorrupt) as error:
            call()
        message = str(error.value)
        assert str(path) in message, message
        missing = [word for word in words if word not in message]
        assert not missing, f"{missing} not in: {message}"
    assert not (tmp_path / "out.pt").exists()


def test_a_good_npz_in_any_of_its_layouts_is_read(tmp_path):
    rgb = np.arange(10 * 32 * 32 * 3, dtype=np.int64).astype(np.uint8).reshape(10, 32, 32, 3)
    for name, x in (("hwc", rgb), ("chw", rgb.transpose(0, 3, 1, 2))):
        data = load_npz({"train": save_npz(tmp_path / f"{name}.npz", x, LABELS)}, "cifar10")
        x = data["train"][0]
        assert x.shape == (10, 3, 32, 32) and (x.numpy() == rgb.transpose(0, 3, 1, 2)).all()
    assert load_npz({"train": save_npz(tmp_path / "g.npz", GREY, LABELS)}, "mnist")["train"][0].shape == (10, 1, 28, 28)
