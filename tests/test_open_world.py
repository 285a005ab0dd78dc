"""A new study from a paper, end to end, through the real snakemake on the smoke preset: ``cnnrepro new-study``
writes it; it compares a torchvision zoo model that is not in the registry with a network of the researcher's own
(a model file) on their images in folders made here and on a torchvision dataset declared by its class (the smoke
preset's synthetic stand-ins); the paper table gets our numbers beside the paper's and the report shows them. An
edit of the model file reruns the runs of its model, and nothing else."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.test_declared_datasets import make_image_folders
from tests.test_e2e import copy_workflow, snakemake
from tests.test_model_files import TINY_NET

STUDY = "fruit_paper"
CONFIGFILES = ("presets/smoke.yaml", f"studies/{STUDY}.yaml")
PAPER = {"torchvision.mobilenet_v3_small": "88.5", "tiny_net": "91.0"}


@pytest.fixture(scope="module")
def open_world(tmp_path_factory):
    """(workdir, results folder) of one snakemake run of the new study (benchmarked), the built-in studies left
    out."""
    workdir = copy_workflow(tmp_path_factory.mktemp("open_world"), keep_studies=())
    (workdir / "my_nets.py").write_text(TINY_NET)
    make_image_folders(workdir / "fruits", {"train": 16, "test": 6})
    env = {**os.environ, "PYTHONPATH": str(workdir / "src")}
    made = subprocess.run([sys.executable, "-m", "cnnrepro.cli", "new-study", STUDY, "--models",
                           "torchvision.mobilenet_v3_small", "tiny_net", "--datasets", "fruits", "FashionMNIST",
                           "--model-file", "my_nets.py"], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr
    study = workdir / "studies" / f"{STUDY}.yaml"
    study.write_text(study.read_text().replace("benchmark: false", "benchmark: true"))  # size, FLOPs, latency too
    table = workdir / "studies" / f"{STUDY}.csv"
    rows = list(csv.DictReader(table.open()))
    for row in rows:  # the paper's numbers, as a researcher types them in
        row["test_acc_pct"] = PAPER[row["model"]]
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = snakemake(workdir, "--cores", "2", "--configfile", *CONFIGFILES)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, workdir / "results" / "smoke"


def _runs(results):
    return {path.parent.relative_to(results / "runs").as_posix(): json.loads(path.read_text())
            for path in (results / "runs" / STUDY).rglob("metrics.json")}


@pytest.mark.e2e
def test_a_zoo_model_and_a_model_file_train_on_image_folders_and_a_declared_torchvision_dataset(open_world):
    from cnnrepro import models

    _, results = open_world
    runs = _runs(results)
    assert set(runs) == {f"{STUDY}/{dataset}/{model}/none/base/seed0" for dataset in ("fruits", "fashionmnist")
                         for model in PAPER}
    assert {record["status"] for record in runs.values()} == {"ok"}
    zoo = runs[f"{STUDY}/fruits/torchvision.mobilenet_v3_small/none/base/seed0"]
    assert zoo["params_total"] == models.count_params(models.build_on_meta("torchvision.mobilenet_v3_small", 3))
    assert zoo["settings"]["classes"] == ["apple", "leaf", "sky"] and zoo["settings"]["input"]["size"] == 32
    mine = runs[f"{STUDY}/fashionmnist/tiny_net/none/base/seed0"]
    assert mine["settings"]["model_file"]["path"] == "my_nets.py" and mine["settings"]["num_classes"] == 10
    assert mine["settings"]["classes"][0] == "T-shirt/top"
    for model in PAPER:  # benchmarked on the CPU: the zoo model and the model file's network alike
        bench = json.loads((results / "bench" / STUDY / "fruits" / model / "none" / "cpu.json").read_text())
        assert bench["measured"] is True and bench["latency_correct"]["median_ms"] > 0
    log = (results / "logs" / "job_server.log").read_text()
    assert "declined" not in log and "launcher had imported" not in log  # every job's params are plain data


@pytest.mark.e2e
def test_the_image_folders_are_prepared_once_at_the_studys_size_with_their_statistics(open_world):
    _, results = open_world
    sidecar = json.loads((results / "data" / "fruits.pt.json").read_text())
    assert sidecar["meta"]["mapped"] is True and sidecar["meta"]["size"] == 32
    assert sidecar["splits"]["train"]["class_counts"] == [16, 16, 16]
    assert sidecar["splits"]["test"]["class_counts"] == [6, 6, 6]
    assert len(sidecar["meta"]["train_statistics"]["mean"]) == 3
    classes = pd.read_csv(results / "data" / "fruits_classes.csv")
    assert set(classes["class_name"]) == {"apple", "leaf", "sky"}
    log = (results / "logs" / "train" / STUDY / "fruits" / "tiny_net" / "none" / "base" / "seed0.log").read_text()
    assert "the splits are held on cpu" in log


@pytest.mark.e2e
def test_the_paper_table_gets_our_numbers_beside_the_papers_and_the_report_shows_them(open_world):
    _, results = open_world
    table = pd.read_csv(results / "tables" / f"{STUDY}.csv", dtype=str, keep_default_na=False)
    assert len(table) == 4
    runs = _runs(results)
    for _, row in table.iterrows():
        assert row["test_acc_pct_paper"] == PAPER[row["model"]]
        record = runs[f"{STUDY}/{row['dataset']}/{row['model']}/none/base/seed0"]
        assert float(row["test_acc_pct_ours"]) == pytest.approx(100 * record["test"]["top1"], abs=1e-3)
        assert row["test_acc_pct_verdict"] in {"agree", "differ"}
    page = (results / "report" / STUDY / "index.html").read_text()
    assert f'<section id="{STUDY}">' in page and "torchvision.mobilenet_v3_small" in page
    assert STUDY in (results / "report" / "index.html").read_text()
    assert (results / "report" / "figures" / STUDY).is_dir()


@pytest.mark.e2e
def test_an_edit_of_the_model_file_reruns_the_runs_of_its_model_and_nothing_else(open_world):
    workdir, _ = open_world
    nets = workdir / "my_nets.py"
    original = nets.read_text()
    nets.write_text(original.replace("width=8", "width=6"))
    try:
        dry = snakemake(workdir, "-n", "--cores", "2", "--configfile", *CONFIGFILES, timeout=600)
    finally:
        nets.write_text(original)
    assert dry.returncode == 0, dry.stderr[-3000:]
    trained = re.findall(r"rule train:.*?wildcards: ([^\n]+)", dry.stdout, re.S)
    assert trained and all("model=tiny_net" in wildcards for wildcards in trained), trained
    assert len(trained) == 2  # both datasets' tiny_net runs; the zoo model's are kept
    assert "rule prepare_dataset" not in dry.stdout
