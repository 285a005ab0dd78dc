"""Partial results through the real snakemake (--keep-going): a run that diverges and a run whose job fails are
marked as such in the tables and the report, which still renders; each study is built by its own target rule."""

import pandas as pd
import pytest

from cnnrepro.models import pretrained
from tests.test_e2e import copy_workflow, snakemake

OVERLAY = """
results: results/partial
device: cpu
train_threads: 1
weights_dir: {weights}
data: {{source: synthetic, synthetic_train: 64, synthetic_test: 32}}
limits: {{max_epochs: 1}}
studies:
  partial_demo:
    title: A run that learns and one that diverges
    datasets: [mnist]
    models: [cnn]
    input: {{normalization: mnist}}
    recipe: {{optimizer: sgd, lr: 1.0e-3, batch_size: 16, loss: ce, schedule: constant, epochs: 1}}
    grid: {{recipe.lr: [1.0e-3, 1.0e+30]}}
    benchmark: false
    tables:
      - file: {table}
        number: Tabela X
        caption: Made-up numbers
        match: {{model: {{CNN: {{model: cnn}}}}, lr: recipe.lr}}
        metrics: {{acc: test_top1_pct}}
  partial_failed:
    title: A run whose job fails (corrupt ImageNet weights)
    datasets: [mnist]
    models: [resnet18]
    freeze: [head]
    pretrained: true
    input: {{size: 32, rgb: true, normalization: imagenet}}
    recipe: {{optimizer: sgd, lr: 1.0e-3, batch_size: 16, loss: ce, schedule: constant, epochs: 1}}
    benchmark: false
"""


@pytest.mark.e2e
def test_failed_and_diverged_runs_appear_as_such_and_the_report_still_renders(tmp_path):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    # One built-in study beside the overlay's two, to show that their target rules leave it alone.
    copy_workflow(workdir, keep_studies=("seed001_resnet_mobilenet_cifar10",))
    (workdir / "made_up.csv").write_text("model,lr,acc\nCNN,0.001,90.0\nCNN,1e30,90.0\n")
    weights = tmp_path / "weights"
    weights.mkdir()
    pretrained.weights_file("resnet18", weights).write_bytes(b"not a checkpoint")  # its hash cannot match
    (workdir / "partial.yaml").write_text(OVERLAY.format(weights=weights, table="./made_up.csv"))
    # The two studies' own target rules: the built-in study does not run.
    result = snakemake(workdir, "--cores", "2", "--keep-going", "--configfile", "partial.yaml", "--",
                       "partial_demo", "partial_failed")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Partial results: the report of what ran is in" in output, output[-3000:]
    results = workdir / "results" / "partial"
    assert not (results / "runs" / "seed001_resnet_mobilenet_cifar10").exists()

    table = pd.read_csv(results / "tables" / "made_up.csv", dtype=str, keep_default_na=False).set_index("lr")
    assert table.loc["0.001", "status_ours"] == "ok" and table.loc["0.001", "acc_ours"] != ""
    assert table.loc["1e30", "status_ours"] == "diverged" and table.loc["1e30", "acc_reason"] == "diverged"
    assert table.loc["1e30", "acc_verdict"] == "not comparable"
    runs = pd.read_csv(results / "tables" / "runs.csv", dtype=str, keep_default_na=False).set_index("run_id")
    failed = "partial_failed/mnist/resnet18/head/base/seed0"
    assert runs.loc[failed, "status"] == "failed"
    assert "weights" in (results / "logs" / "train" / f"{failed}.log").read_text()

    page = (results / "report" / "index.html").read_text()
    assert 'id="partial"' in page and "Partial results" in page
    assert '<td class="status-failed">failed</td>' in page and '<td class="status-diverged">diverged</td>' in page
    assert '<span class="na">diverged</span>' in page
    own = (results / "report" / "partial_failed" / "index.html").read_text()
    assert f'<a href="../../logs/train/{failed}.log">log</a>' in own  # the failed run links its log
    assert (results / "report" / "partial_demo" / "report.tex").is_file()
