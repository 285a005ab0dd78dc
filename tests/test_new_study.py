"""``cnnrepro new-study`` writes a study skeleton and its paper-table CSV that pass the start-up check as written;
``cnnrepro download`` fetches a dataset's files, saying what to do when it cannot (no network here)."""

from __future__ import annotations

import csv

import pytest

from cnnrepro import cli, models, startup
from cnnrepro import config as cfg
from tests.test_declared_datasets import make_image_folders
from tests.test_e2e import REPO
from tests.test_model_files import TINY_NET


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a model file and image folders; the model file unloaded afterwards."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_nets.py").write_text(TINY_NET)
    make_image_folders(tmp_path / "fruits", {"train": 4, "test": 2})
    yield tmp_path
    models.unload_model_file(tmp_path / "my_nets.py")


def test_a_new_study_skeleton_and_its_table_pass_the_start_up_check_as_written(workdir, capsys):
    assert cli.main(["--config", str(REPO / "config.yaml"), "new-study", "fruit_paper", "--models",
                     "torchvision.mobilenet_v3_small", "tiny_net", "--datasets", "fruits", "FashionMNIST", "mnist",
                     "--model-file", "my_nets.py"]) == 0
    assert "wrote studies/fruit_paper.yaml" in capsys.readouterr().out
    text = (workdir / "studies" / "fruit_paper.yaml").read_text()
    assert "TODO: the paper's title" in text and "model_files: [my_nets.py]" in text
    with open(workdir / "studies" / "fruit_paper.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["dataset"]) for r in rows][:3] == [
        ("torchvision.mobilenet_v3_small", "fruits"), ("torchvision.mobilenet_v3_small", "fashionmnist"),
        ("torchvision.mobilenet_v3_small", "mnist")]
    assert {r["test_acc_pct"] for r in rows} == {""}  # the paper's numbers go here
    # On the smoke preset (synthetic stand-ins for FashionMNIST and MNIST, the folders' own images), with only the
    # new study: it starts as written.
    config = cfg.deep_merge(cfg.load_yaml(REPO / "config.yaml"), cfg.load_yaml(REPO / "presets" / "smoke.yaml"))
    config["studies"] = {}
    config = cfg.deep_merge(config, cfg.load_yaml(workdir / "studies" / "fruit_paper.yaml"))
    checked = startup.check(config)
    run = checked.settings["fruit_paper/fruits/tiny_net/none/base/seed0"]
    assert run["classes"] == ["apple", "leaf", "sky"] and run["model_file"]["path"] == "my_nets.py"
    assert checked.settings["fruit_paper/fashionmnist/tiny_net/none/base/seed0"]["num_classes"] == 10
    assert cfg.data_settings(checked.config, "fashionmnist")["source"] == "synthetic"  # follows data.source


@pytest.mark.parametrize("arguments, words", [
    (["--models", "torchvision.densenet12", "--datasets", "mnist"], ["closest: torchvision.densenet121"]),
    (["--models", "my_net", "--datasets", "mnist"], ["--models my_net", "--model-file"]),
    (["--models", "cnn", "--datasets", "fashion"], ["--datasets fashion", "torchvision dataset class"]),
    (["--models", "cnn", "--datasets", "mnist", "--model-file", "missing.py"], ["missing.py: no such file"]),
])
def test_new_study_refuses_what_cannot_be_with_the_way_out(arguments, words, workdir, capsys):
    assert cli.main(["--config", str(REPO / "config.yaml"), "new-study", "mine", *arguments]) == 2
    error = capsys.readouterr().err
    assert all(word in error for word in words), error
    assert not (workdir / "studies").exists()


def test_new_study_never_overwrites(workdir, capsys):
    arguments = ["--config", str(REPO / "config.yaml"), "new-study", "mine", "--models", "cnn", "--datasets", "mnist"]
    assert cli.main(arguments) == 0
    (workdir / "studies" / "mine.csv").write_text("model,dataset,test_acc_pct\ncnn,mnist,99.1\n")
    assert cli.main(arguments) == 2
    assert "exists: not overwritten" in capsys.readouterr().err
    assert "99.1" in (workdir / "studies" / "mine.csv").read_text()


def test_download_says_what_to_do_without_internet(workdir, monkeypatch, capsys):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.SVHN, "download", offline)
    overlay = workdir / "svhn.yaml"
    overlay.write_text(f"data_root: {workdir / 'data'}\ndata: {{datasets: {{svhn: {{class: SVHN}}}}}}\n")
    base = ["--config", str(REPO / "config.yaml"), "--configfile", str(overlay), "download"]
    assert cli.main([*base, "svhn"]) == 1
    error = capsys.readouterr().err
    assert "downloading SVHN failed" in error and "Name or service not known" in error and "synthetic" in error
    assert cli.main([*base, "pets"]) == 2
    assert "'data.datasets.pets'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_declared_torchvision_dataset_is_downloaded_by_its_own_rule(tmp_path):
    """Its own local rule (download_declared_dataset), so that the built-in datasets' download jobs keep theirs."""
    from tests.test_e2e import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path, keep_studies=())
    (workdir / "fashion.yaml").write_text(
        "data: {datasets: {fashion: {class: FashionMNIST, source: torchvision}}}\n"
        "studies: {fashion_study: {datasets: [fashion], models: [cnn], input: {normalization: auto},\n"
        "  recipe: {lr: 0.01, batch_size: 8, epochs: 1}, benchmark: false}}\n")
    dry = snakemake(workdir, "results/smoke/data/fashion.pt", "-n", "--cores", "1", "--configfile",
                    "presets/smoke.yaml", "fashion.yaml", timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "rule download_declared_dataset:" in dry.stdout and "rule download_dataset:" not in dry.stdout
    assert "results/smoke/data/fashion.declared-source-verified" in dry.stdout
