"""The real snakemake command on the smoke preset, in a temporary copy of the workflow."""

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cnnrepro import config as cfg

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "config.yaml", "workflow", "presets", "paper_tables", "authors", "report", "profiles",
                  "envs", "src", "tests/data"]
# One real snakemake run covers the smoke preset and a sixth study added by configuration only.
CONFIGFILES = ("presets/smoke.yaml", "tests/data/sixth_study.yaml")
SIXTH = "tiny_mnist_fcnn_vs_cnn"


def copy_workflow(dest: Path, keep_studies: tuple[str, ...] | None = None) -> Path:
    """The workflow copied into ``dest``; with ``keep_studies``, its config.yaml keeps only those built-in studies
    (a test's own overlay adds what it runs, and the start-up checks only what the test needs)."""
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, dest / name)
    if keep_studies is not None:
        config = cfg.load_yaml(dest / "config.yaml")
        config["studies"] = {name: config["studies"][name] for name in keep_studies}
        (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(workdir / "src")}
    return subprocess.run(["snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def working_directory(path: Path):
    """Relative paths in the config (paper tables) resolve against the workdir, as snakemake's do."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def local_smoke_run(workdir: Path):
    """The `smoke` fixture (tests/conftest.py, one run per session, also test_slurm's local reference)."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = copy_workflow(workdir)
    result = snakemake(workdir, "--cores", "2", "--configfile", *CONFIGFILES)
    assert result.returncode == 0, result.stderr[-4000:]
    return smoke_config(workdir)


def smoke_config(workdir: Path):
    """(workdir, its smoke configuration validated, its results folder): what the `smoke` fixture gives."""
    config = cfg.load_yaml(workdir / "config.yaml")
    for overlay in CONFIGFILES:
        config = cfg.deep_merge(config, cfg.load_yaml(workdir / overlay))
    with working_directory(workdir):
        cfg.validate(config)
    return workdir, config, workdir / config["results"]


@pytest.mark.e2e
def test_every_run_has_metrics_history_and_log(smoke):
    workdir, config, results = smoke
    runs = cfg.expand_runs(config)
    assert {r.study for r in runs} >= {"seed000_resnet_mnist", "seed001_resnet_mobilenet_cifar10",
                                       "seed002_squeezenet_dsc", "seed003_kmnist_fcnn_cnn",
                                       "seed004_squeezenet_transfer_cifar10", SIXTH}
    for run in runs:
        metrics = json.loads((results / "runs" / run.id / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["run_id"] == run.id
        assert 0.0 <= metrics["test"]["top1"] <= 1.0 and metrics["torch_version"]
        history = pd.read_csv(results / "runs" / run.id / "history.csv")
        assert len(history) == 1 and {"train_loss", "eval_acc", "lr", "epoch_seconds"} <= set(history.columns)
        assert "epoch 1/1" in (results / "logs" / "train" / f"{run.id}.log").read_text()
        assert not (results / "checkpoints" / run.id / "checkpoint.pt").exists()


@pytest.mark.e2e
def test_synthetic_data_is_learned_well_above_chance(smoke):
    _, _, results = smoke
    metrics = json.loads((results / "runs" / "smoke_sanity/mnist/cnn/none/base/seed0/metrics.json").read_text())
    assert metrics["test"]["top1"] >= 0.4  # chance is 0.1


@pytest.mark.e2e
def test_every_paper_table_has_paper_and_our_columns(smoke):
    workdir, config, results = smoke
    for study in config["studies"].values():
        for table in study.get("tables", []):
            source = workdir / cfg.paper_table_path(config, table)  # a bare name or a path, as configured
            frame = pd.read_csv(results / "tables" / source.name, dtype=str, keep_default_na=False)
            paper = pd.read_csv(source, dtype=str, keep_default_na=False)
            assert len(frame) == len(paper)
            for column in table["metrics"]:
                if column in paper.columns:
                    assert frame[f"{column}_paper"].tolist() == paper[column].tolist()
                    assert f"{column}_ours" in frame
            assert (frame["runs_ours"].astype(int) > 0).all(), table["file"]
    seed002 = pd.read_csv(results / "tables" / "seed002_table6_cifar10.csv")
    assert (seed002["params_count_ours"] == seed002["params_count_paper"]).all()
    times = pd.read_csv(results / "tables" / "seed002_table7_cifar10_times.csv")
    assert times["gpu_time_ms_mean_ours"].isna().all()  # no GPU here: left empty, never a CPU number
    assert (times["cpu_time_ms_mean_ours"] > 0).all() and (times["cpu_time_ms_std_ours"] >= 0).all()


@pytest.mark.e2e
def test_a_study_added_by_configuration_only_gets_its_table(smoke):
    """The sixth study: existing dataset and models, its own recipe, its table outside paper_tables/."""
    _, config, results = smoke
    assert config["studies"][SIXTH]["tables"][0]["file"] == "tests/data/paper_tables/tiny_table.csv"
    frame = pd.read_csv(results / "tables" / "tiny_table.csv", dtype=str, keep_default_na=False).set_index("model")
    assert frame.loc["FCNN", "test_acc_pct_paper"] == "97.80" and frame.loc["CNN", "test_acc_pct_paper"] == "99.10"
    assert frame.loc["FCNN", "final_train_loss_paper"] == "0.0710" and frame.loc["CNN", "params_paper"] == "225034"
    for column in ("test_acc_pct_ours", "final_train_loss_ours", "params_ours"):
        assert frame[column].ne("").all(), column
    assert (frame["runs_ours"].astype(int) > 0).all()
    assert 0 <= float(frame.loc["CNN", "test_acc_pct_ours"]) <= 100
    for model, row in (("fcnn", "FCNN"), ("cnn", "CNN")):
        metrics = json.loads((results / "runs" / SIXTH / "mnist" / model / "none/base/seed0/metrics.json").read_text())
        assert metrics["settings"]["recipe"]["batch_size"] == 32 and metrics["settings"]["recipe"]["optimizer"] == "adam"
        # The table's cells are this run's numbers, not just any numbers.
        assert int(frame.loc[row, "params_ours"]) == metrics["params_total"]
        assert float(frame.loc[row, "test_acc_pct_ours"]) == pytest.approx(100 * metrics["test"]["top1"], abs=1e-3)
    assert not (results / "bench" / SIXTH).exists()  # benchmark: false
    assert "tiny\\_table.csv" in (results / "report" / "report.tex").read_text()
    assert SIXTH in (results / "report" / "index.html").read_text()


@pytest.mark.e2e
def test_gpu_benchmarks_say_not_measured_and_cpu_ones_measure(smoke):
    _, _, results = smoke
    gpu = sorted((results / "bench").rglob("gpu.json"))
    cpu = sorted((results / "bench").rglob("cpu.json"))
    assert gpu and len(gpu) == len(cpu)
    for path in gpu:
        record = json.loads(path.read_text())
        assert record["measured"] is False and "no CUDA device" in record["reason"]
    record = json.loads(cpu[0].read_text())
    assert record["measured"] is True and record["latency_correct"]["median_ms"] > 0


@pytest.mark.e2e
def test_report_names_every_study_and_latex_has_booktabs(smoke):
    _, config, results = smoke
    html = (results / "report" / "index.html").read_text()
    for name, study in config["studies"].items():
        assert name in html and study.get("title", name) in html
    assert "<img src=\"data:image/png;base64," in html  # self-contained
    tex = (results / "report" / "report.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "Tabela 6 of SqueezeNet-DSC dissertation" in tex


# --- the report (issue #11): verdicts, per-study pages, the browser and pdflatex on the smoke run's report ---


@pytest.mark.e2e
def test_every_study_has_its_own_page_and_the_tables_carry_verdicts(smoke):
    _, config, results = smoke
    for name in config["studies"]:
        page = (results / "report" / name / "index.html").read_text()
        summary = "comparable numbers agree" if config["studies"][name]["tables"] else "no paper table configured"
        assert f'<section id="{name}">' in page and summary in page
        assert (results / "report" / name / "report.tex").read_text().strip().endswith("\\end{document}")
    table = pd.read_csv(results / "tables" / "seed002_table7_cifar10_times.csv", dtype=str, keep_default_na=False)
    assert set(table["gpu_time_ms_mean_reason"]) == {"no GPU here"}
    assert set(table["gpu_time_ms_mean_verdict"]) == {"not comparable"}
    assert set(table["cpu_time_ms_mean_verdict"]) <= {"agree", "differ"}  # ranked across the five models
    params = pd.read_csv(results / "tables" / "seed002_table6_cifar10.csv", dtype=str, keep_default_na=False)
    assert set(params["params_count_verdict"]) == {"agree"}  # the architectures match the paper's counts
    assert set(pd.read_csv(results / "tables" / "runs.csv")["status"]) == {"ok"}


@pytest.mark.e2e
def test_the_smoke_report_reads_in_a_browser_and_compiles_to_pdf(smoke, tmp_path):
    import shutil

    from tests.test_report_browser import check_in_browser

    _, config, results = smoke
    if shutil.which("pdflatex"):  # the full report's PDF (a study's own is built by its target rule)
        pdf = results / "report" / "report.pdf"
        assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF"), pdf
    measured = check_in_browser(results / "report" / "index.html", tmp_path)  # skips without Chromium
    assert int(measured["grid-tables"]) == sum(len(s["tables"]) for s in config["studies"].values())
    assert int(measured["assumption-tables"]) == sum(1 for s in config["studies"].values() if s.get("assumptions"))


@pytest.mark.e2e
def test_second_run_has_nothing_to_do(smoke):
    workdir, _, _ = smoke
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", *CONFIGFILES, timeout=300)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.e2e
def test_smoke_jobs_ran_as_forks_of_the_job_server_with_the_numbers_of_jobs_of_their_own(smoke, tmp_path):
    from benchmarks.compare_results import compare_metrics

    workdir, config, results = smoke
    assert config["job_server"] is True  # the smoke preset turns it on
    log = (results / "logs" / "job_server.log").read_text()
    assert "declined" not in log
    assert "launcher had imported" not in log  # every job's params are plain data: its launcher stays light
    runs = cfg.expand_runs(config)
    forked = re.findall(r"^(\w+)\.py \(pid \d+\): exit status 0", log, re.M)
    assert forked.count("train") == len(runs) and forked.count("benchmark") > 0 and forked.count("figure") > 0
    socket_path = Path(re.search(r"listening on (\S+)", log).group(1))
    assert not socket_path.exists() and not socket_path.parent.exists()  # stopped and removed at the end
    # One run again, every job a process of its own: the same numbers (its record, every field but times and
    # places, and its history; the tables are made from these).
    alone = copy_workflow(tmp_path, keep_studies=())
    run = next(r for r in runs if r.study == "smoke_sanity")
    target = f"{config['results']}/runs/{run.id}/metrics.json"
    result = snakemake(alone, target, "--cores", "2", "--configfile", *CONFIGFILES, "--config", "job_server=False")
    assert result.returncode == 0, result.stderr[-4000:]
    assert not (alone / config["results"] / "logs" / "job_server.log").exists()
    forked, own = results / "runs" / run.id, alone / config["results"] / "runs" / run.id
    assert compare_metrics(forked.parent, own.parent) == []
    histories = [pd.read_csv(base / "history.csv").drop(columns=["epoch_seconds"]) for base in (forked, own)]
    pd.testing.assert_frame_equal(*histories)
