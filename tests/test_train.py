"""The training engine end to end on small synthetic data: learning, determinism, kill-and-resume,
divergence, feature caching, checkpoint selection, schedules, speed switches and the progress bar."""

from __future__ import annotations

import csv
import dataclasses
import io as stdio
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnrepro import config as cfgmod
from cnnrepro import models
from cnnrepro.data import compact
from cnnrepro.data.splits import Split
from cnnrepro.engine import checkpoint, determinism, feature_cache, train
from cnnrepro.engine import recipe as recipe_mod
from cnnrepro.engine.recipe import deviations, effective_speed, native_bf16, numerics_record
from cnnrepro.models import registry
from cnnrepro.report import pages
from cnnrepro.runtime.progress import ProgressBar
from cnnrepro.tables.aggregate import flat_runs
from cnnrepro.tables.summary import summarize
from tests.conftest import config_defaults

NORMALIZATION = {
    "mnist": {"mean": [0.1307], "std": [0.3081]},
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
BASE_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "loss": "ce", "schedule": "constant",
               "epochs": 4}
# What a frozen ImageNet model sees in these tests: RGB at 32 px (48 px gives SqueezeNet 2x2 feature maps).
RGB_INPUT = {"size": 32, "rgb": True, "normalization": "imagenet"}
FREEZE_LEVELS = {"none": "all", "head": ["head"], "stem": ["conv1", "head"], "late": ["layer4", "head"],
                 # seed 004's level 2 for squeezenet1_1: fire8, fire9 and the head
                 "last_two_fire_and_head": ["features.11", "features.12", "head"]}
# Fields that measure the machine, not the run.
VOLATILE = ("train_seconds", "peak_memory_bytes", "resumed")


def make_settings(model: str = "cnn", recipe: dict | None = None, freeze: str = "none",
                  input_cfg: dict | None = None, augment: str = "none", speed: dict | None = None) -> dict:
    """Settings as the workflow builds them, from a one-study config."""
    recipe = {**BASE_RECIPE, **(recipe or {})}
    if "max_epochs" in recipe:  # plateau schedules: max_epochs replaces the constant schedule's epochs
        recipe.pop("epochs")
    study = {"datasets": ["mnist"], "models": [model], "freeze": [freeze], "pretrained": False,
             "input": input_cfg or {"normalization": "mnist"}, "augment": augment, "eval_split": "test",
             "recipe": recipe}
    config = cfgmod.validate({"studies": {"unit": study}, "normalization": NORMALIZATION,
                              "freeze_levels": FREEZE_LEVELS, "device": "cpu", "speed": speed or {}})
    return cfgmod.run_settings(config, cfgmod.Run("unit", "mnist", model, freeze, "base", 0))


def outputs(folder: Path) -> train.RunOutputs:
    return train.RunOutputs(folder / "weights.pt", folder / "history.csv", folder / "metrics.json",
                            folder / "checkpoint.pt")


def run(settings: dict, data: Path, folder: Path) -> dict:
    return train.train_run(settings, data, outputs(folder), threads=1)


def stable(record: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(record)).items() if k not in VOLATILE}


def history_rows(folder: Path) -> list[dict]:
    with open(folder / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(handle)]


def weights(folder: Path) -> dict:
    return torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


pytestmark = pytest.mark.usefixtures("torch_globals_restored")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_file) -> tuple[dict, Path]:
    """One uninterrupted cnn run (conv + dropout), shared by several tests."""
    folder = tmp_path_factory.mktemp("reference")
    record = train.train_run(make_settings("cnn"), data_file, outputs(folder), threads=1)
    return record, folder


# --------------------------------------------------------------------------- (a) it learns


def test_short_run_learns_and_writes_every_output(reference):
    record, folder = reference
    assert record["status"] == "ok"
    assert record["test"]["top1"] > 0.8  # chance is 0.1
    assert record["epochs_run"] == 4 and record["stop_reason"] == "max_epochs"
    assert len(history_rows(folder)) == 4
    for name in ("weights.pt", "history.csv", "metrics.json"):
        assert (folder / name).is_file()
    assert not (folder / "checkpoint.pt").exists()  # removed once the outputs are written
    assert json.loads((folder / "metrics.json").read_text())["test"]["top1"] == record["test"]["top1"]
    # Faithful by default: fp32, no speed switch, and the record says so.
    assert record["speed"]["channels_last"] is False and record["speed"]["amp_bf16"] is False
    assert record["speed"]["numerics"]["precision"] == "fp32" and record["speed"]["deviations"] == []
    assert record["speed"]["numerics"]["deterministic_algorithms"] is True


# --------------------------------------------------------------------------- (b) determinism


def test_same_seed_gives_identical_metrics_and_weights(reference, data_file, tmp_path):
    record, folder = reference
    again = run(make_settings("cnn"), data_file, tmp_path)
    assert stable(again) == stable(record)
    assert history_rows(tmp_path) == history_rows(folder)
    assert_same_weights(weights(tmp_path), weights(folder))


def test_cuda_only_switches_do_not_change_cpu_numbers(data_file, tmp_path):
    cuda_only = {"amp_bf16": True, "tf32": True, "cudnn_benchmark": True}
    on = run(make_settings("fcnn", {"epochs": 2}, speed=cuda_only), data_file, tmp_path / "on")
    off = run(make_settings("fcnn", {"epochs": 2}), data_file, tmp_path / "off")
    assert on["test"] == off["test"] and on["train_loss_last"] == off["train_loss_last"]
    assert on["speed"]["requested"]["amp_bf16"] and on["speed"]["deviations"] == []  # none took effect on CPU
    assert_same_weights(weights(tmp_path / "on"), weights(tmp_path / "off"))


# --------------------------------------------------------------------------- (c) kill and resume

KILLABLE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from cnnrepro.engine import train

    settings = json.loads(Path(sys.argv[1]).read_text())
    real = train.train_one_epoch

    def slow_epoch(*args, **kwargs):
        # A pause between training and the checkpoint, so the kill lands inside an unfinished epoch.
        result = real(*args, **kwargs)
        time.sleep(float(sys.argv[4]))
        return result

    train.train_one_epoch = slow_epoch
    out = Path(sys.argv[3])
    train.train_run(settings, sys.argv[2], train.RunOutputs(out / "weights.pt", out / "history.csv",
                    out / "metrics.json", out / "checkpoint.pt"), threads=1)
""")


def _checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    except Exception:  # not written yet
        return 0


@pytest.mark.slow
def test_killed_run_resumes_to_identical_results(reference, data_file, tmp_path, caplog):
    record, ref_folder = reference
    settings = make_settings("cnn")
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings))
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(settings_file), str(data_file), str(folder), "0.6"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while _checkpoint_epoch(folder / "checkpoint.pt") < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(folder / "checkpoint.pt")
    assert 1 <= killed_at < 4 and not (folder / "metrics.json").exists()
    seconds_before_kill = torch.load(folder / "checkpoint.pt", weights_only=False)["train_seconds"]
    stale = folder / ".checkpoint.pt.leftover.tmp"  # what a kill inside an atomic write leaves behind
    stale.write_bytes(b"partial")

    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    resumed = run(settings, data_file, folder)
    assert f"resuming {settings['run_id']} from the checkpoint after epoch {killed_at}" in caplog.text
    assert not stale.exists()
    assert stable(resumed) == stable(record)
    # The time the paper's "Tempo de Execução" is compared with includes the killed attempt's.
    assert resumed["resumed"] is True and record["resumed"] is False
    assert seconds_before_kill > 0 and resumed["train_seconds"] > seconds_before_kill
    assert history_rows(folder) == history_rows(ref_folder)
    assert_same_weights(weights(folder), weights(ref_folder))


@pytest.mark.slow
@pytest.mark.parametrize("bn_frozen", ["train", "eval"])  # BN statistics in the checkpoint / cached features
def test_head_only_run_resumes_from_a_small_checkpoint(bn_frozen, data_file, tmp_path, monkeypatch):
    settings = make_settings("resnet18", {"epochs": 3, "batch_size": 64, "optimizer": "sgd", "lr": 0.05,
                                          "momentum": 0.9, "bn_frozen": bn_frozen}, "head", RGB_INPUT)
    plain = run(settings, data_file, tmp_path / "plain")
    real, calls = train.train_one_epoch, []

    def dies_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    folder = tmp_path / "killed"
    with monkeypatch.context() as patch:
        patch.setattr(train, "train_one_epoch", dies_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            run(settings, data_file, folder)
    ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2
    # Only what training changes: the head and the buffers, not the 11M frozen parameters.
    assert {k for k in ckpt["model"] if not k.startswith("fc.")} == \
        {k for k in ckpt["model"] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert {"fc.weight", "fc.bias"} <= ckpt["model"].keys()
    resumed = run(settings, data_file, folder)
    assert stable(resumed) == stable(plain)
    assert history_rows(folder) == history_rows(tmp_path / "plain")
    assert_same_weights(weights(folder), weights(tmp_path / "plain"))


def test_checkpoint_for_other_settings_or_damaged_is_ignored(data_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    first = make_settings("fcnn", {"epochs": 2})
    fresh = run(first, data_file, tmp_path / "fresh")
    # A checkpoint from a run with another lr must not be resumed from.
    folder = tmp_path / "other"
    _crash_after_checkpoint(make_settings("fcnn", {"epochs": 2, "lr": 5e-3}), data_file, folder)
    caplog.clear()
    again = run(first, data_file, folder)
    assert "ignoring checkpoint" in caplog.text and "other settings" in caplog.text
    assert "resuming" not in caplog.text
    assert stable(again) == stable(fresh)
    # A damaged checkpoint (e.g. a full disk) is ignored too.
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    caplog.clear()
    again = run(first, data_file, folder)
    assert "cannot be read" in caplog.text
    assert stable(again) == stable(fresh)
    # So is one whose frozen weights are not this model's (e.g. a replaced weights file).
    _crash_after_checkpoint(first, data_file, folder)
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=False)
    torch.save({**ckpt, "frozen_digest": "0" * 64}, folder / "checkpoint.pt")
    caplog.clear()
    again = run(first, data_file, folder)
    assert "frozen weights differ" in caplog.text and "resuming" not in caplog.text
    assert stable(again) == stable(fresh)


# --------------------------------------------------------------------------- (d) divergence


def test_nan_loss_marks_run_diverged_and_writes_outputs(data_file, tmp_path, monkeypatch):
    calls = {"train": 0}

    def poisoned(name, num_classes):
        def criterion(logits, y):
            loss = F.cross_entropy(logits, y)
            if torch.is_grad_enabled():  # training batches only; evaluation runs under no_grad
                calls["train"] += 1
                if calls["train"] > 8:  # epoch 1 has 8 batches of 32
                    loss = loss * float("nan")
            return loss
        return criterion

    monkeypatch.setattr(train, "make_loss", poisoned)
    record = run(make_settings("fcnn", {"epochs": 4}), data_file, tmp_path)
    assert record["status"] == "diverged" and record["diverged_epoch"] == 2 and record["epochs_run"] == 1
    for name in ("weights.pt", "history.csv", "metrics.json"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"
    assert len(history_rows(tmp_path)) == 1


def test_huge_learning_rate_diverges_without_exception(data_file, tmp_path):
    record = run(make_settings("fcnn", {"optimizer": "sgd", "lr": 1e30, "epochs": 3}), data_file, tmp_path)
    assert record["status"] == "diverged"
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


# --------------------------------------------------------------------------- (e) feature caching


@pytest.mark.parametrize("model, size, recipe", [
    ("resnet18", 32, {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 3}),
    # 48 px gives 2x2 channels_last feature maps, and classifier.0 is an active Dropout(0.5).
    ("squeezenet1_1", 48, {"optimizer": "adam", "lr": 1e-3, "epochs": 3}),
])
def test_feature_cache_trains_the_same_head(model, size, recipe, data_file, tmp_path):
    recipe = {**recipe, "bn_frozen": "eval"}
    input_cfg = {**RGB_INPUT, "size": size}
    # channels_last on: the cache must keep the memory format the backbone emits (dropout masks depend on it).
    speed = {"channels_last": True}
    cached = run(make_settings(model, {**recipe, "feature_cache": True}, "head", input_cfg, speed=speed), data_file,
                 tmp_path / "cached")
    plain = run(make_settings(model, {**recipe, "feature_cache": False}, "head", input_cfg, speed=speed), data_file,
                tmp_path / "plain")
    assert cached["speed"]["feature_cache"] is True and plain["speed"]["feature_cache"] is False
    assert plain["speed"]["feature_cache_reason"] == "recipe.feature_cache is false"
    assert cached.keys() == plain.keys() and cached["test"].keys() == plain["test"].keys()
    a, b = weights(tmp_path / "cached"), weights(tmp_path / "plain")
    reference_model = models.build_model(model, 10, 3, size)
    assert a.keys() == reference_model.state_dict().keys()  # the full model, trained head inserted
    head = models.get_spec(model).head
    for key in a:
        if key.startswith(head + "."):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(a[key], b[key]), key  # the frozen backbone is untouched
    trained = [k for k in a if k.startswith(head + ".")]
    init = {k: reference_model.state_dict()[k] for k in trained}
    assert any(not torch.allclose(a[k], init[k]) for k in trained)  # the head really trained
    for x, y in zip(history_rows(tmp_path / "cached"), history_rows(tmp_path / "plain")):
        for field in ("train_loss", "eval_loss", "train_acc", "eval_acc"):
            assert math.isclose(float(x[field]), float(y[field]), rel_tol=1e-4, abs_tol=1e-5), field
    assert abs(cached["test"]["top1"] - plain["test"]["top1"]) <= 1 / 128


def test_registered_stages_reproduce_each_model():
    split_models = [name for name in models.model_names() if models.get_spec(name).feature_split]
    assert split_models == ["resnet18", "resnet34", "resnet50", "squeezenet1_1"]
    for name in split_models:
        torch.manual_seed(0)
        model = models.build_model(name, 10, 3, 64).eval()
        stages = models.get_spec(name).feature_split.stages(model)
        module_names = dict(model.named_modules())
        for stage_name, module in stages:  # each stage is the model's own module, or a parameter-free step
            assert module_names.get(stage_name) is module or not any(True for _ in module.parameters()), stage_name
        # Every parameter belongs to exactly one stage.
        assert sorted(id(p) for _, m in stages for p in m.parameters()) == sorted(id(p) for p in model.parameters())
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            out = x
            for _, module in stages:
                out = module(out)
            assert torch.equal(out, model(x))


def _plan(model: str, recipe: dict | None = None, freeze: str = "head", augment: str = "none"):
    settings = make_settings(model, {"bn_frozen": "eval", **(recipe or {})}, freeze, RGB_INPUT, augment)
    net = models.build_model(model, 10, settings["in_channels"], 32)
    models.apply_freeze(net, model, settings["trainable"])
    return feature_cache.plan(settings, net)


def test_feature_cache_refusal_reasons(monkeypatch):
    assert _plan("resnet18").use
    assert _plan("squeezenet1_1", {"bn_frozen": "train"}).use  # it has no BatchNorm
    assert "BatchNorm runs in train mode" in _plan("resnet18", {"bn_frozen": "train"}).reason
    assert "augmented (augment: flip)" in _plan("resnet18", augment="flip").reason
    assert "every module trains (trainable: all)" in _plan("resnet18", freeze="none").reason
    assert "the first stage of resnet18 (conv1) trains" in _plan("resnet18", freeze="stem").reason
    assert _plan("resnet18", {"feature_cache": False}).reason == "recipe.feature_cache is false"
    assert "registers no chain of stages" in _plan("cnn").reason
    # The KMNIST CNN has Dropout(0.25) inside what would be its frozen prefix.
    split = models.FeatureSplit(lambda m: [("features", m.features), ("flatten", torch.nn.Flatten(1)),
                                           *((f"classifier.{i}", c) for i, c in enumerate(m.classifier))])
    monkeypatch.setitem(registry._REGISTRY, "cnn", dataclasses.replace(models.get_spec("cnn"), feature_split=split))
    assert "dropout inside the frozen prefix (features)" in _plan("cnn").reason


def test_feature_cache_decision_is_logged(data_file, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    recipe = {"epochs": 1, "batch_size": 64}
    run(make_settings("resnet18", recipe, "head", RGB_INPUT), data_file, tmp_path / "bn")
    assert "feature cache: off — BatchNorm runs in train mode" in caplog.text
    caplog.clear()
    monkeypatch.setattr(feature_cache, "MAX_BYTES", 1000)
    record = run(make_settings("resnet18", {**recipe, "bn_frozen": "eval"}, "head", RGB_INPUT), data_file,
                 tmp_path / "budget")
    assert "feature cache: off — the output of the frozen prefix conv1 … flatten (14 stages) would take" \
        in caplog.text
    assert record["speed"]["feature_cache"] is False


# --------------------------------------------------------------------------- (f) best vs last


def test_select_best_and_last_keep_the_right_epoch(data_file, tmp_path):
    recipe = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 6}
    best = run(make_settings("fcnn", {**recipe, "select": "best"}), data_file, tmp_path / "best")
    last = run(make_settings("fcnn", {**recipe, "select": "last"}), data_file, tmp_path / "last")
    accs = [float(r["eval_acc"]) for r in history_rows(tmp_path / "best")]
    best_epoch = accs.index(max(accs)) + 1  # the first epoch reaching the maximum (strict improvement)
    assert best["selected_epoch"] == best_epoch < 6, accs  # a non-trivial choice on this data
    assert last["selected_epoch"] == 6
    # A run stopped at the best epoch has exactly the weights "best" kept.
    short = run(make_settings("fcnn", {**recipe, "epochs": best_epoch, "select": "last"}), data_file,
                tmp_path / "short")
    assert_same_weights(weights(tmp_path / "best"), weights(tmp_path / "short"))
    assert best["test"] == short["test"]
    assert best["last_epoch"]["test_top1"] == last["test"]["top1"]
    assert any(not torch.equal(weights(tmp_path / "best")[k], weights(tmp_path / "last")[k])
               for k in weights(tmp_path / "best"))


# --------------------------------------------------------------------------- (g) schedules through train_run


def test_plateau_drop_lowers_lr_and_stops(data_file, tmp_path):
    # Every epoch from the second is "stalled" (threshold 100), so drops follow epochs 2 and 3.
    recipe = {"schedule": "plateau_drop", "max_epochs": 8, "threshold": 100.0, "patience": 1, "factor": 0.5,
              "max_drops": 2}
    record = run(make_settings("fcnn", recipe), data_file, tmp_path)
    assert record["stop_reason"] == "max_drops" and record["epochs_run"] == 3
    assert [float(r["lr"]) for r in history_rows(tmp_path)] == [1e-3, 1e-3, 5e-4]


def test_keras_plateau_early_stops_and_epoch_cap_holds(data_file, tmp_path):
    recipe = {"schedule": "keras_plateau", "max_epochs": 8, "monitor": "eval_loss", "stop_patience": 2,
              "stop_min_delta": 100.0, "reduce_patience": 1, "reduce_min_delta": 100.0, "reduce_factor": 0.1}
    record = run(make_settings("fcnn", recipe), data_file, tmp_path / "keras")
    assert record["stop_reason"] == "early_stopping" and record["epochs_run"] == 3
    lrs = [float(r["lr"]) for r in history_rows(tmp_path / "keras")]
    assert lrs[:2] == [1e-3, 1e-3] and math.isclose(lrs[2], 1e-4)
    # A schedule that never stalls ends at the recipe's epoch cap.
    capped = make_settings("fcnn", {"schedule": "plateau_drop", "max_epochs": 3, "threshold": -100.0})
    record = run(capped, data_file, tmp_path / "cap")
    assert record["stop_reason"] == "max_epochs" and record["epochs_run"] == 3


# --------------------------------------------------------------------------- evaluation only where it is needed


def _count_evaluations(monkeypatch) -> list[int]:
    """The size of every split train.evaluate is asked to evaluate."""
    sizes, real = [], train.evaluate

    def counting(model, split, *args, **kwargs):
        sizes.append(len(split))
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", counting)
    return sizes


def test_eval_every_skips_epochs_without_changing_the_training(data_file, tmp_path, monkeypatch, caplog):
    # fcnn has dropout: an evaluation drawing random numbers would change the training after it.
    every = run(make_settings("fcnn", {"epochs": 5}), data_file, tmp_path / "every")
    sizes = _count_evaluations(monkeypatch)
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    sparse = run(make_settings("fcnn", {"epochs": 5, "eval_every": 2}), data_file, tmp_path / "sparse")
    assert "evaluating every 2 epochs and after the last" in caplog.text and "(not evaluated)" in caplog.text
    assert len(sizes) == 3  # epochs 2, 4 and 5; the record reuses epoch 5's (eval is the test split here)
    assert_same_weights(weights(tmp_path / "every"), weights(tmp_path / "sparse"))
    assert {k: v for k, v in stable(sparse).items() if k not in ("settings", "eval_every")} == \
        {k: v for k, v in stable(every).items() if k not in ("settings", "eval_every")}
    assert sparse["eval_every"] == 2 and every["eval_every"] == 1
    rows, full = history_rows(tmp_path / "sparse"), history_rows(tmp_path / "every")
    for i, (row, reference) in enumerate(zip(rows, full), 1):
        if i in (2, 4, 5):
            assert row == reference
        else:  # missing, not invented: an empty cell (NaN to pandas)
            assert row["eval_loss"] == row["eval_acc"] == "" and row["train_loss"] == reference["train_loss"]


@pytest.mark.parametrize("eval_split, evaluations", [("test", 3), ("val", 4)])
def test_the_record_reuses_the_last_epochs_evaluation(eval_split, evaluations, data_file, tmp_path, monkeypatch):
    settings = make_settings("fcnn", {"epochs": 3})
    settings["eval_split"] = eval_split
    sizes = _count_evaluations(monkeypatch)
    record = run(settings, data_file, tmp_path)
    # One evaluation per epoch; then only the test split when it is not the eval split (never the same twice).
    assert len(sizes) == evaluations
    if eval_split == "test":
        assert record["eval"]["acc"] == record["test"]["top1"] and record["eval"]["loss"] == record["test"]["loss"]
    assert float(history_rows(tmp_path)[-1]["eval_acc"]) == record["eval"]["acc"]


@pytest.mark.parametrize("recipe, why", [
    ({"schedule": "keras_plateau", "max_epochs": 3, "monitor": "eval_loss"},
     "schedule keras_plateau monitors eval_loss"),
    ({"select": "best", "epochs": 3}, "select: best compares every epoch"),
])
def test_a_schedule_or_selection_reading_every_evaluation_forces_eval_every_1(recipe, why, data_file, tmp_path,
                                                                               caplog):
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    record = run(make_settings("fcnn", {**recipe, "eval_every": 3}), data_file, tmp_path)
    assert f"evaluating every epoch, not every 3 (recipe.eval_every): {why}" in caplog.text
    assert record["eval_every"] == 1 and all(row["eval_acc"] for row in history_rows(tmp_path))


def test_eval_every_defaults_to_every_epoch_and_must_be_positive():
    assert cfgmod.check_recipe({"lr": 0.1, "batch_size": 1, "epochs": 1}, "r")["eval_every"] == 1  # faithful
    with pytest.raises(cfgmod.ConfigError, match=r"'r.eval_every'.*0 is less than the minimum of 1"):
        cfgmod.check_recipe({"lr": 0.1, "batch_size": 1, "epochs": 1, "eval_every": 0}, "r")


def test_a_run_stopping_between_evaluations_evaluates_its_last_epoch(data_file, tmp_path):
    # plateau_drop on the training loss stops after its 2nd drop (epoch 3), between evaluations (every 4th).
    recipe = {"schedule": "plateau_drop", "max_epochs": 8, "threshold": 100.0, "patience": 1, "factor": 0.5,
              "max_drops": 2, "eval_every": 4}
    record = run(make_settings("fcnn", recipe), data_file, tmp_path)
    assert record["stop_reason"] == "max_drops" and record["epochs_run"] == 3 and record["eval_every"] == 4
    assert [bool(row["eval_acc"]) for row in history_rows(tmp_path)] == [False, False, True]


# --------------------------------------------------------------------------- speed switches, progress, schema


def speed_block(**on) -> dict:
    return {**config_defaults()["speed"], **on}


def test_speed_switches_are_off_by_default():
    assert not any(config_defaults()["speed"].values())
    assert effective_speed(speed_block(), "cuda", True, (9, 0), "adam")["requested"] == dict.fromkeys(
        ("channels_last", "amp_bf16", "tf32", "cudnn_benchmark", "compile", "fused_optimizer"), False)


@pytest.mark.parametrize("capability, bf16", [((7, 5), False), ((8, 0), True), ((9, 0), True), (None, False)])
def test_bf16_only_where_the_gpu_computes_it_natively(capability, bf16):
    # T4/V100/RTX 20xx (7.x) report bf16 as supported through emulation: autocast must stay off there.
    assert native_bf16(capability) is bf16
    speed = effective_speed(speed_block(amp_bf16=True, tf32=True), "cuda", True, capability)
    assert speed["amp_bf16"] is bf16 and speed["tf32"] is bf16  # TF32 also starts with Ampere (8.0)


def test_effective_speed_decisions():
    every = speed_block(channels_last=True, amp_bf16=True, tf32=True, cudnn_benchmark=True)
    cpu = effective_speed(every, "cpu", has_conv=True)
    assert {k: v for k, v in cpu.items() if k != "requested"} == {
        "channels_last": True, "amp_bf16": False, "tf32": False, "cudnn_benchmark": False, "compile": False,
        "fused_optimizer": False}
    assert effective_speed(every, "cpu", has_conv=False)["channels_last"] is False
    cuda = effective_speed(every, "cuda", has_conv=True, capability=(8, 6))
    assert cuda["amp_bf16"] and cuda["cudnn_benchmark"] and cuda["tf32"] and not cuda["compile"]
    compiled = effective_speed(speed_block(compile=True), "cuda", True, (8, 0))
    assert compiled["compile"] is True and compiled["amp_bf16"] is False and compiled["channels_last"] is False


def test_the_record_names_every_deviation_from_fp32():
    numerics = {"precision": "bf16 autocast", "tf32_matmul": True, "tf32_cudnn": True, "cudnn_benchmark": True,
                "channels_last": True, "compile": False, "fused_optimizer": True}
    assert deviations(numerics) == ["bf16 autocast", "TF32 matmul", "TF32 cuDNN", "cudnn.benchmark", "channels_last",
                                    "fused optimizer"]
    faithful = numerics_record(effective_speed(speed_block(), "cpu", True), torch.device("cpu"), "cpu", None)
    assert faithful["precision"] == "fp32" and deviations(faithful) == []


def test_progress_bar_draws_only_when_enabled():
    tty = stdio.StringIO()
    bar = ProgressBar(4, "epoch 1/3", stream=tty, enabled=True, min_interval=0.0)
    for done in range(1, 5):
        bar.update(done, lambda: 0.5)
    bar.close()
    text = tty.getvalue()
    assert "epoch 1/3 [" in text and "4/4 loss 0.5000" in text and "ETA" in text
    assert text.endswith("\r\033[K")
    piped = stdio.StringIO()  # StringIO.isatty() is False, like a job log
    bar = ProgressBar(4, "epoch 1/3", stream=piped)
    bar.update(4, lambda: 0.5)
    bar.close()
    assert not bar.enabled and piped.getvalue() == ""


def test_speed_switches_live_in_the_speed_block_not_the_recipe():
    with pytest.raises(cfgmod.ConfigError, match="'r.channels_last'.*misspelt"):
        cfgmod.check_recipe({"lr": 0.1, "batch_size": 1, "epochs": 1, "channels_last": True}, "r")
    assert cfgmod.check_recipe({"lr": 0.1, "batch_size": 1, "epochs": 1, "feature_cache": False}, "r")[
        "feature_cache"] is False


def test_keras_epoch_loss_weights_each_batch_by_its_size(data_file):
    # 256 images in batches of 100: 100, 100, 56. With lr 0 and no dropout the loss of every batch is known in
    # advance, so both means can be computed by hand.
    train_split = compact.read_compact(data_file)["splits"]["train"]
    split = Split(train_split["x"], train_split["y"], lambda x, generator=None, train=False: x.float() / 255,
                  torch.device("cpu"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    losses = {mode: train.train_one_epoch(model, split, optimizer, F.cross_entropy, 100,
                                          torch.Generator().manual_seed(1), "train", False, epoch_loss=mode)[0]
              for mode in ("batch_mean", "sample_mean")}
    order = torch.randperm(256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        per_batch = [(F.cross_entropy(model(split.x[idx].float() / 255), split.y[idx]).item(), len(idx))
                     for idx in order.split(100)]
    assert [n for _, n in per_batch] == [100, 100, 56]
    assert losses["batch_mean"] == pytest.approx(sum(loss for loss, _ in per_batch) / 3, rel=1e-6)
    assert losses["sample_mean"] == pytest.approx(sum(loss * n for loss, n in per_batch) / 256, rel=1e-6)
    assert losses["sample_mean"] != pytest.approx(losses["batch_mean"], rel=1e-6)  # the last batch is smaller


def running_sum_epoch(model, split, optimizer, batch_size, generator, weighted):
    """The textbook loop with the epoch's loss summed on the device batch by batch (the engine's result must be
    this number, bit for bit)."""
    total, correct, seen, batches = torch.zeros(()), 0, 0, 0
    model.train()
    for x, y in split.batches(batch_size, generator, train=True):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(y) if weighted else loss.detach()
        correct += int((logits.argmax(1) == y).sum())
        seen, batches = seen + len(y), batches + 1
    return float(total) / (seen if weighted else batches), correct / len(split)


@pytest.mark.parametrize("mode", ["batch_mean", "sample_mean"])
def test_the_epoch_step_computes_what_the_textbook_loop_does_bit_for_bit(data_file, mode):
    train_split = compact.read_compact(data_file)["splits"]["train"]
    split = Split(train_split["x"], train_split["y"], lambda x, generator=None, train=False: x.float() / 255,
                  torch.device("cpu"))
    results = {}
    for loop in ("engine", "textbook"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        if loop == "engine":
            epoch = train.train_one_epoch(model, split, optimizer, F.cross_entropy, 100, generator, "train", False,
                                          epoch_loss=mode)
        else:
            epoch = running_sum_epoch(model, split, optimizer, 100, generator, mode == "sample_mean")
        results[loop] = epoch, model.state_dict()
    assert results["engine"][0] == results["textbook"][0]  # loss and accuracy, exactly
    assert 0 < results["engine"][0][1] <= 1
    assert_same_weights(results["engine"][1], results["textbook"][1])


def test_the_fused_optimizer_is_opt_in_and_recorded(data_file, tmp_path):
    assert recipe_mod.has_fused("sgd") and recipe_mod.has_fused("adam") and not recipe_mod.has_fused("rmsprop")
    asked = speed_block(fused_optimizer=True)
    assert effective_speed(asked, "cpu", True, None, "adam")["fused_optimizer"] is True
    assert effective_speed(asked, "cpu", True, None, "rmsprop")["fused_optimizer"] is False  # no such kernel
    assert effective_speed(speed_block(), "cuda", True, (9, 0), "adam")["fused_optimizer"] is False
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not recipe_mod.make_optimizer(params, {"optimizer": "sgd", "lr": 0.1}).defaults["fused"]
    assert recipe_mod.make_optimizer(params, {"optimizer": "sgd", "lr": 0.1}, fused=True).defaults["fused"] is True

    record = run(make_settings("fcnn", recipe={"epochs": 1}, speed={"fused_optimizer": True}), data_file, tmp_path)
    assert record["speed"]["fused_optimizer"] is True and record["speed"]["numerics"]["fused_optimizer"] is True
    assert record["speed"]["deviations"] == ["fused optimizer"]


# --------------------------------------------------------------------------- determinism as it really was

# torch's own alert text (c10 Context::alertNotDeterministic with warn_only); no CPU op raises it, so a test
# model raises the same warning where a CUDA op would.
TORCH_ALERT = (" does not have a deterministic implementation, but you set 'torch.use_deterministic_algorithms(True, "
               "warn_only=True)'. You can file an issue at https://github.com/pytorch/pytorch/issues to help us "
               "prioritize adding deterministic support for this operation.")


class AlertingNet(torch.nn.Module):
    """A linear classifier whose first ``alerts`` forward passes warn as torch does for an op without a
    deterministic implementation (process-wide count: a resumed attempt in the same process warns no more)."""

    alerts_left = 0

    def __init__(self, num_classes: int):
        super().__init__()
        self.head = torch.nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        if AlertingNet.alerts_left > 0:
            AlertingNet.alerts_left -= 1
            warnings.warn("adaptive_avg_pool2d_backward_cuda" + TORCH_ALERT, UserWarning)
            warnings.warn("an unrelated warning the run must not swallow", UserWarning)
        return self.head(x.flatten(1))


@pytest.fixture
def alerting_model():
    @models.register_model("alerting_net", head="head", input_size=28, channels=1)
    def alerting_net(num_classes: int, in_channels: int = 1, input_size: int = 28) -> torch.nn.Module:
        return AlertingNet(num_classes)

    yield "alerting_net"
    models.unregister_model("alerting_net")


def test_the_alert_texts_name_the_op():
    assert determinism.nondeterministic_op("index_add_cuda_" + TORCH_ALERT) == "index_add_cuda_"
    cublas = ("Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` or "
              "`at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic because it "
              "uses CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior in this case, you must set an "
              "environment variable before running your PyTorch application: CUBLAS_WORKSPACE_CONFIG=:4096:8 ...")
    assert determinism.nondeterministic_op(cublas) == determinism.CUBLAS_OP
    assert determinism.nondeterministic_op("Default grid_sample behavior has changed") is None


def test_the_record_names_the_ops_that_ran_without_a_deterministic_implementation(alerting_model, data_file,
                                                                                   tmp_path, caplog, recwarn):
    caplog.set_level(logging.WARNING, logger="cnnrepro")
    AlertingNet.alerts_left = 10**6  # every forward pass, training and evaluation
    record = run(make_settings(alerting_model, {"epochs": 2}), data_file, tmp_path)
    numerics = record["speed"]["numerics"]
    assert numerics["deterministic_algorithms"] is True  # asked for, and yet:
    assert numerics["nondeterministic_ops"] == ["adaptive_avg_pool2d_backward_cuda"]
    assert caplog.text.count("adaptive_avg_pool2d_backward_cuda ran without a deterministic implementation") == 1
    assert any("an unrelated warning" in str(w.message) for w in recwarn)  # passed on, not swallowed
    summary = summarize(json.loads((tmp_path / "metrics.json").read_text()))
    assert flat_runs([summary])["nondeterministic_ops"].tolist() == ["adaptive_avg_pool2d_backward_cuda"]


@pytest.mark.filterwarnings("ignore:an unrelated warning")
def test_ops_seen_before_a_crash_stay_in_the_resumed_runs_record(alerting_model, data_file, tmp_path):
    settings = make_settings(alerting_model, {"epochs": 2})
    AlertingNet.alerts_left = 1  # the first forward pass of the first attempt only
    _crash_after_checkpoint(settings, data_file, tmp_path)
    record = run(settings, data_file, tmp_path)
    assert record["resumed"] and record["speed"]["numerics"]["nondeterministic_ops"] == [
        "adaptive_avg_pool2d_backward_cuda"]


def test_a_run_without_alerts_records_none_and_the_runs_table_says_deterministic(reference):
    record, folder = reference
    assert record["speed"]["numerics"]["nondeterministic_ops"] == []
    runs = flat_runs([summarize(json.loads((folder / "metrics.json").read_text()))])
    assert runs["nondeterministic_ops"].tolist() == ["none"]
    assert pages._deterministic_text("none", "") == "yes"
    assert pages._deterministic_text("none", "channels_last, cudnn.benchmark") == "no: cudnn.benchmark"
    assert pages._deterministic_text("index_add_cuda_", "") == "no: index_add_cuda_"
    assert pages._deterministic_text("", "") == pages.MISSING  # a record from before


def test_select_best_keeps_its_state_in_host_memory_apart_from_the_model(data_file, tmp_path, monkeypatch):
    kept = []
    real = train.run_epoch

    def spy(run_):
        loss = real(run_)
        kept.append(run_.best_state)
        return loss

    monkeypatch.setattr(train, "run_epoch", spy)
    run(make_settings("fcnn", {"epochs": 2, "select": "best"}), data_file, tmp_path)
    assert kept[-1] and all(t.device.type == "cpu" for t in kept[-1].values())
    source = torch.ones(2)
    copy = checkpoint.cpu_copy({"w": source})["w"]
    source.add_(1)
    assert copy.tolist() == [1.0, 1.0]  # a copy even of a CPU tensor: training on does not change it


# --------------------------------------------------------------------------- CUDA paths through CPU seams


def _crash_after_checkpoint(settings, data_file, folder):
    """Run until the last checkpoint is written, then die before the outputs (as a killed job would)."""
    def crash(*args, **kwargs):
        raise RuntimeError("crash")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.io, "write_json", crash)
        with pytest.raises(RuntimeError, match="crash"):
            run(settings, data_file, folder)
    assert (folder / "checkpoint.pt").exists()


@pytest.mark.parametrize("change", ["speed", "device"])
def test_a_checkpoint_from_other_speed_settings_or_another_device_is_refused(change, data_file, tmp_path, caplog,
                                                                           monkeypatch):
    settings = make_settings("fcnn", {"epochs": 2})
    _crash_after_checkpoint(make_settings("fcnn", {"epochs": 2}, speed={"channels_last": True})
                            if change == "speed" else settings, data_file, tmp_path)
    if change == "device":
        # The same settings, but the checkpoint was written by a run on another device type (a CPU checkpoint
        # resumed on a GPU once crashed on its RNG state): the fingerprint includes the device type.
        real = checkpoint.settings_hash
        monkeypatch.setattr(checkpoint, "settings_hash", lambda obj: real({**obj, "device": "cuda"}))
    caplog.set_level(logging.INFO, logger="cnnrepro")
    record = run(settings, data_file, tmp_path)
    assert "ignoring checkpoint" in caplog.text and "other settings" in caplog.text and "resuming" not in caplog.text
    assert record["status"] == "ok" and record["resumed"] is False


def test_a_checkpoint_is_read_to_the_cpu_and_moved_deliberately(data_file, tmp_path, monkeypatch):
    settings = make_settings("cnn", {"optimizer": "adam", "epochs": 2})
    _crash_after_checkpoint(settings, data_file, tmp_path)
    seen, real_load = [], torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt = checkpoint.load(tmp_path / "checkpoint.pt", checkpoint.settings_hash({}), "")  # wrong fingerprint: None
    assert ckpt is None and seen == ["cpu"]  # never onto the run's device: RNG states must stay CPU byte tensors
    raw = real_load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert raw["rng"]["torch"].dtype == torch.uint8 and "cuda" not in raw["rng"]  # a CPU run saves no CUDA RNG
    assert all(t.device.type == "cpu" for t in raw["model"].values())
    resumed = run(settings, data_file, tmp_path)
    assert resumed["resumed"] is True and seen.count("cpu") >= 2


def test_saved_weights_are_cpu_tensors_whatever_the_device():
    class OnAnotherDevice:  # stands for a CUDA tensor: what leaves it must come through .cpu()
        def detach(self):
            return self

        def cpu(self):
            return "moved to the cpu"

    assert checkpoint.to_cpu({"w": OnAnotherDevice()}) == {"w": "moved to the cpu"}


def test_a_cpu_run_never_initialises_cuda(data_file, tmp_path, monkeypatch):
    # A job pinned to the CPU (device: cpu) on a machine with a GPU: our code asks CUDA nothing, and the job
    # hides the GPUs so that torch itself (the optimizers' graph-capture check) sees no accelerator either.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator",
                        lambda check_available=False: None if os.environ["CUDA_VISIBLE_DEVICES"] == ""
                        else torch.device("cuda"))
    calls = []
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "get_device_capability", "init",
                 "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _name=name, **k: calls.append(_name))
    record = run(make_settings("fcnn", {"epochs": 1}), data_file, tmp_path)
    assert record["status"] == "ok" and calls == [] and not torch.cuda.is_initialized()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
