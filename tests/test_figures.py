"""The report's figures: which ones a study gets from its configuration, their captions, and drawing each kind
from run records of the shape training writes (PNG and PDF, readable back)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnrepro import config as cfg
from cnnrepro import startup
from cnnrepro.report import figure_plan, figures

REPO = Path(__file__).resolve().parents[1]
SEED003 = "seed003_kmnist_fcnn_cnn"
SEED004 = "seed004_squeezenet_transfer_cifar10"
SIXTH = "tiny_mnist_fcnn_vs_cnn"


@pytest.fixture
def checked(raw_config) -> startup.Checked:
    """config.yaml through the start-up checks (cwd is the repository, so authors/ and paper_tables/ resolve)."""
    return startup.check(raw_config)


@pytest.fixture
def config(checked):
    return checked.config


def overlay(raw: dict, *paths: str) -> startup.Checked:
    for path in paths:
        raw = cfg.deep_merge(raw, cfg.load_yaml(REPO / path))
    return startup.check(raw)


def caption(checked: startup.Checked, study: str, name: str) -> str:
    return figure_plan.caption(checked.config, figure_plan.find(checked.figures, study, name))


# ------------------------------------------------------------------------------------------------ the plan


def test_each_built_in_study_gets_the_figures_its_configuration_asks_for(checked, config):
    plan = checked.figures
    names = {study: [f.name for f in figs] for study, figs in plan.items()}
    assert names[SEED003] == ["curves-kmnist", "published", "f1-kmnist", "confusion-kmnist", "kernels-cnn", "pareto",
                              "classes-kmnist"]
    # Three freeze levels: one learning-curve figure each, six grid settings per figure.
    curves = [f for f in plan[SEED004] if f.kind == "curves"]
    assert [f.freeze for f in curves] == ["head", "last_two_fire_and_head", "none"]
    assert all(len(f.runs) == 6 for f in curves)
    assert "kernels-cnn" not in names[SEED004] and "published" not in names[SEED004]
    # Seed 002: both datasets get curves, F1 and confusion figures; one Pareto figure over all ten models.
    seed002 = {f.name: f for f in plan["seed002_squeezenet_dsc"]}
    assert {"curves-cifar10", "curves-cifar100", "f1-cifar100", "confusion-cifar10"} <= set(seed002)
    assert len(seed002["pareto"].runs) == 10
    # Every run of a study is in one of its learning-curve figures, exactly once.
    for study, figs in plan.items():
        drawn = [run for f in figs if f.kind == "curves" for run in f.runs]
        assert sorted(drawn) == sorted(run.id for run in cfg.expand_runs(config, [study]))


def test_the_published_figure_draws_the_runs_each_experiment_names_in_order(checked):
    published = next(f for f in checked.figures[SEED003] if f.kind == "published")
    assert published.runs == (f"{SEED003}/kmnist/cnn/none/augment-none/seed42",
                              f"{SEED003}/kmnist/cnn/none/augment-kmnist10x/seed42",
                              f"{SEED003}/kmnist/cnn_nopool/none/augment-none/seed42",
                              f"{SEED003}/kmnist/fcnn/none/augment-none/seed42",
                              f"{SEED003}/kmnist/fcnn/none/augment-kmnist10x/seed42")


def test_a_study_added_by_configuration_only_gets_figures(raw_config):
    names = [f.name for f in overlay(raw_config, "presets/smoke.yaml", "tests/data/sixth_study.yaml").figures[SIXTH]]
    # No benchmark, no kernels, no published curves configured: the figures every study gets.
    assert names == ["curves-mnist", "f1-mnist", "confusion-mnist", "classes-mnist"]


def test_figure_settings_that_name_nothing_stop_at_start_up_naming_the_key(raw_config):
    bad = copy.deepcopy(raw_config)
    bad["studies"][SEED003]["figures"]["kernels"] = ["vgg19"]
    with pytest.raises(cfg.ConfigError, match=r"studies\.seed003_kmnist_fcnn_cnn\.figures\.kernels\[0\].*vgg19"):
        startup.check(bad)
    bad = copy.deepcopy(raw_config)
    bad["studies"][SEED003]["figures"]["published_curves"]["runs"]["cnn"] = {"model": "cnn", "augment": "crop_flip"}
    with pytest.raises(cfg.ConfigError, match=r"published_curves\.runs\.cnn': no run of the study has"):
        startup.check(bad)
    bad = copy.deepcopy(raw_config)
    bad["studies"][SEED003]["figures"]["published_curves"]["runs"]["resnet"] = {"model": "cnn"}
    with pytest.raises(cfg.ConfigError, match=r"has no experiment 'resnet'; its experiments: cnn, cnn_aug"):
        startup.check(bad)
    bad = copy.deepcopy(raw_config)
    bad["studies"][SEED003]["figures"]["published_curves"]["file"] = "missing.json"
    with pytest.raises(cfg.ConfigError, match=r"published_curves\.file'.*authors/missing\.json does not exist"):
        startup.check(bad)
    bad = copy.deepcopy(raw_config)
    bad["studies"][SEED003]["figures"]["paper_figures"] = {"curve": "Figure 4"}
    with pytest.raises(cfg.ConfigError, match=r"paper_figures\.curve': not a figure kind"):
        startup.check(bad)


def test_every_caption_is_clean_restructured_text_and_says_what_is_drawn(checked, config):
    from docutils.core import publish_parts

    for study, figs in checked.figures.items():
        for figure in figs:
            text = figure_plan.caption(config, figure)
            # Snakemake's report renders captions as reStructuredText: no markup may leak or warn.
            html = publish_parts(text, writer_name="html", settings_overrides={"report_level": 1})["body"]
            assert "system-message" not in html, (figure.name, html)
            assert (config["studies"][study]["title"] or study) in text
    assert "Figures 9-10" in caption(checked, SEED003, "kernels-cnn")
    assert "freeze level head" in caption(checked, SEED004, "curves-cifar10-head")
    limited = startup.check(cfg.deep_merge(copy.deepcopy(config), {"limits": {"max_epochs": 1}}))
    assert "max_epochs 1" in caption(limited, SEED003, "curves-kmnist")
    assert "max_epochs" not in caption(checked, SEED003, "curves-kmnist")


# ------------------------------------------------------------------------------------------------ drawing


def fake_run(tmp: Path, config: dict, run: cfg.Run, epochs: int, seed: int = 0, evaluate_every: int = 1) -> dict:
    """metrics.json and history.csv of the shape training writes, with plausible made-up numbers."""
    rng = np.random.default_rng(seed + sum(map(ord, run.id)))
    folder = tmp / run.id
    folder.mkdir(parents=True, exist_ok=True)
    epoch = np.arange(1, epochs + 1)
    train_loss = 2.3 * np.exp(-epoch / (epochs * rng.uniform(0.15, 0.5))) + rng.uniform(0.05, 0.3)
    eval_loss = train_loss + rng.uniform(0.0, 0.3) * epoch / epochs
    history = pd.DataFrame({"epoch": epoch, "train_loss": train_loss, "train_acc": 1 - train_loss / 2.5,
                            "eval_loss": eval_loss, "eval_acc": 1 - eval_loss / 2.5,
                            "lr": 1e-3 * 0.1 ** (epoch // max(epochs // 3, 1)), "epoch_seconds": 1.0})
    # Epochs not evaluated leave the evaluation columns empty.
    history.loc[epoch % evaluate_every != 0, ["eval_loss", "eval_acc"]] = np.nan
    history.to_csv(folder / "history.csv", index=False)
    grid = dict(cfg.variants(config["studies"][run.study]))[run.variant]
    num_classes = {"cifar100": 100}.get(run.dataset, 10)
    confusion = rng.integers(0, 5, (num_classes, num_classes)) + np.diag(rng.integers(20, 60, num_classes))
    f1 = rng.uniform(0.5, 0.95, num_classes)
    record = {"status": "ok", "run_id": run.id,
              "settings": {**run.wildcards, "seed": run.seed, "grid": grid, "eval_split": "test",
                           "augment": grid.get("augment", "none")},
              "test": {"f1_per_class": f1.tolist(), "macro_f1": float(f1.mean()),
                       "confusion_matrix": confusion.tolist(), "top1": 0.8}}
    (folder / "metrics.json").write_text(json.dumps(record))
    return {"metrics": folder / "metrics.json", "history": folder / "history.csv"}


def draw(tmp_path, checked, study, name, epochs=12, evaluate_every=1, extra=None):
    config = checked.config
    figure = figure_plan.find(checked.figures, study, name)
    runs = {run.id: run for run in cfg.expand_runs(config, [study])}
    made = [fake_run(tmp_path / "runs", config, runs[r], epochs, evaluate_every=evaluate_every) for r in figure.runs]
    files = {"metrics": [m["metrics"] for m in made], "histories": [m["history"] for m in made], **(extra or {})}
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    figures.make(config, figure, files, png, pdf)
    return png, pdf


def assert_images(png: Path, pdf: Path, min_size=(600, 300)) -> np.ndarray:
    import matplotlib.image as mpimg

    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    image = mpimg.imread(png)
    assert image.shape[1] >= min_size[0] and image.shape[0] >= min_size[1]
    # Not a blank canvas: a figure with data has many distinct colours.
    assert len(np.unique(image.reshape(-1, image.shape[-1])[::7], axis=0)) > 50
    return image


@pytest.mark.slow
def test_learning_curves_draw_every_configuration_and_skip_unevaluated_epochs(tmp_path, checked):
    png, pdf = draw(tmp_path, checked, SEED003, "curves-kmnist", epochs=30, evaluate_every=3)
    assert_images(png, pdf)
    history = figures.read_history(next((tmp_path / "runs").rglob("history.csv")))
    assert history["eval_loss"].isna().sum() == 20 and history["train_loss"].notna().all()
    band = figures._mean_band([history], "eval_loss")
    assert list(band["epoch"]) == list(range(3, 31, 3))


@pytest.mark.slow
def test_each_figure_kind_is_written_as_png_and_pdf(tmp_path, checked, config):
    for name in ("curves-cifar10-head", "f1-cifar10", "confusion-cifar10"):
        assert_images(*draw(tmp_path, checked, SEED004, name, epochs=8))
    for name in ("f1-cifar100", "confusion-cifar100", "curves-cifar100"):
        assert_images(*draw(tmp_path, checked, "seed002_squeezenet_dsc", name, epochs=5))
    published = {"published": [REPO / "authors" / "seed003_kmnist_histories.json"]}
    assert_images(*draw(tmp_path, checked, SEED003, "published", epochs=40, extra=published))
    from cnnrepro.data import prepare, sources

    for dataset, study in (("cifar100", "seed002_squeezenet_dsc"), ("kmnist", SEED003)):
        classes = tmp_path / f"{dataset}_classes.csv"
        prepare.class_distribution(sources.make_synthetic(dataset, 300, 150)).to_csv(classes, index=False)
        png, pdf = tmp_path / f"classes-{dataset}.png", tmp_path / f"classes-{dataset}.pdf"
        figures.make(config, figure_plan.find(checked.figures, study, f"classes-{dataset}"), {"classes": [classes]},
                     png, pdf)
        # 100 classes stay page-wide: indexed bars, not one label per class.
        assert assert_images(png, pdf).shape[1] < 2500


def test_kernels_are_the_first_two_conv_layers_in_module_order():
    from cnnrepro import models

    found = figures.conv_kernels(models.build_model("cnn", 10).state_dict())
    assert [(name, array.shape) for name, array in found] == [("features.0", (32, 1, 3, 3)),
                                                              ("features.2", (64, 32, 3, 3))]
    # A second-layer mosaic has a column per output and a row per input channel (3x3 tiles, 1-pixel gaps).
    mosaic = figures._mosaic(found[1][1])
    assert mosaic.shape == (32 * 4 - 1, 64 * 4 - 1)
    assert mosaic[:3, 4:7] == pytest.approx(found[1][1][1, 0]) and np.isnan(mosaic[3, 0])
    # RGB first layers (seed 002's and the ImageNet models') are found the same way.
    assert figures.conv_kernels(models.build_model("squeezenet", 10, 3, 32).state_dict(), 1)[0][1].shape[1] == 3


@pytest.mark.slow
def test_the_kernel_figure_draws_each_trained_configuration(tmp_path, checked, config):
    import torch

    from cnnrepro import models

    figure = figure_plan.find(checked.figures, SEED003, "kernels-cnn")
    runs = {run.id: run for run in cfg.expand_runs(config, [SEED003])}
    metrics, weights = [], []
    for run_id in figure.runs:
        made = fake_run(tmp_path / "runs", config, runs[run_id], 2)
        model = models.build_model("cnn", 10)
        torch.save(model.state_dict(), made["metrics"].parent / "weights.pt")
        metrics.append(made["metrics"])
        weights.append(made["metrics"].parent / "weights.pt")
    png, pdf = tmp_path / "k.png", tmp_path / "k.pdf"
    figures.make(config, figure, {"metrics": metrics, "weights": weights}, png, pdf)
    assert_images(png, pdf)


def test_a_model_without_convolutions_cannot_draw_kernels(tmp_path):
    import torch

    from cnnrepro import models

    assert figures.conv_kernels(models.build_model("fcnn", 10).state_dict()) == []
    torch.save(models.build_model("fcnn", 10).state_dict(), tmp_path / "w.pt")
    run = figures.RunData("r", {"status": "ok", "settings": {"dataset": "kmnist", "model": "fcnn", "freeze": "none",
                                                           "variant": "base", "grid": {}}})
    with pytest.raises(ValueError, match="fcnn.*has no convolution layer"):
        figures.draw_kernels([run], [tmp_path / "w.pt"], "t")


def test_the_pareto_front_keeps_exactly_the_points_nothing_beats_on_cost_and_accuracy():
    points = [(1.0, 50.0), (2.0, 70.0), (3.0, 60.0), (4.0, 90.0), (0.5, 40.0), (2.0, 65.0)]
    assert figures.pareto_front(points) == [4, 0, 1, 3]
    assert figures.pareto_front([(1.0, 10.0)]) == [0]


@pytest.mark.slow
def test_the_pareto_figure_marks_missing_gpu_latencies(tmp_path):
    points = pd.DataFrame({"dataset": ["cifar10"] * 3 + ["cifar100"] * 3,
                           "model": ["squeezenet", "mobilenet", "vgg19"] * 2, "freeze": ["none"] * 6,
                           "accuracy_pct": [80.0, 85.0, 90.0, 50.0, 55.0, 65.0],
                           "params": [7e5, 3.2e6, 2e7, 7.5e5, 3.3e6, 2e7], "cpu_ms": [3.0, 5.0, 20.0, 3.1, 5.2, 21.0],
                           "gpu_ms": [math.nan] * 6, "gpu_reason": ["no CUDA device"] * 6})
    fig = figures.draw_pareto(points, "t")
    params_ax, cpu_ax, gpu_ax = fig.axes
    assert len(params_ax.collections) == 6 and len(cpu_ax.collections) == 6
    assert "not measured" in gpu_ax.texts[0].get_text() and "no CUDA device" in gpu_ax.texts[0].get_text()
    figures.save(fig, tmp_path / "p.png", tmp_path / "p.pdf")
    assert_images(tmp_path / "p.png", tmp_path / "p.pdf")


def test_a_model_has_one_colour_in_every_figure_and_labels_name_only_what_differs(config):
    assert figures.model_colour("cnn") == figures.model_colour("cnn") != figures.model_colour("fcnn")
    keys = [("kmnist", "cnn", "none", "augment-none"), ("kmnist", "cnn", "none", "augment-kmnist10x"),
            ("kmnist", "fcnn", "none", "augment-none")]
    styles = figures.series_styles(keys)
    assert styles[keys[0]]["color"] == styles[keys[1]]["color"] == figures.model_colour("cnn")
    assert styles[keys[0]]["linestyle"] != styles[keys[1]]["linestyle"]
    runs = [figures.RunData(str(k), {"settings": {"dataset": k[0], "model": k[1], "freeze": k[2], "variant": k[3],
                                                  "grid": {"augment": k[3].split("-")[1]}}}) for k in keys]
    assert list(figures.series_labels(runs).values()) == ["cnn (augment none)", "cnn (augment kmnist10x)",
                                                         "fcnn (augment none)"]
