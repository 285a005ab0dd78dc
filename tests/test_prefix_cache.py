"""Frozen-prefix caching: a suffix of the network trained on the cached output of a fixed frozen prefix trains
exactly as the full network would, and the job log says when and why caching is refused."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from cnnrepro import models
from cnnrepro.engine import feature_cache, train
from cnnrepro.engine.recipe import build_run_model
from cnnrepro.models import registry
from tests.test_train import RGB_INPUT, VOLATILE, history_rows, make_settings, run, weights

pytestmark = pytest.mark.usefixtures("torch_globals_restored")

SEED004_LEVEL2 = "last_two_fire_and_head"  # fire8, fire9 and the new conv10 over a frozen conv1-fire7
SQUEEZE_INPUT = {**RGB_INPUT, "size": 48}  # seed 004's input size


def _plan(model: str, freeze: str, recipe: dict | None = None, augment: str = "none"):
    settings = make_settings(model, {"bn_frozen": "eval", **(recipe or {})}, freeze, RGB_INPUT, augment)
    net = models.build_model(model, 10, settings["in_channels"], 32)
    models.apply_freeze(net, model, settings["trainable"])
    return feature_cache.plan(settings, net)


def test_seed004_level2_caches_conv1_to_fire7_and_trains_fire8_fire9_and_the_head():
    plan = _plan("squeezenet1_1", SEED004_LEVEL2)
    assert plan.use
    assert [name for name, _ in plan.prefix] == [f"features.{i}" for i in range(11)]
    assert [name for name, _ in plan.suffix] == ["features.11", "features.12", "classifier.0", "classifier.1",
                                                 "classifier.2", "classifier.3", "flatten"]
    suffix = plan.suffix_net()
    assert sum(p.numel() for p in suffix.parameters() if p.requires_grad) == 391_306  # the spec's level 2 count
    assert not any(p.requires_grad for _, m in plan.prefix for p in m.parameters())


def test_the_head_only_case_keeps_the_dropout_before_the_head_in_the_suffix():
    plan = _plan("squeezenet1_1", "head")
    assert [name for name, _ in plan.suffix] == ["classifier.0", "classifier.1", "classifier.2", "classifier.3",
                                                 "flatten"]
    assert "the dropout among the trained stages draws the same random numbers" in plan.reason
    resnet = _plan("resnet18", "head")
    assert [name for name, _ in resnet.suffix] == ["fc"] and resnet.prefix[-1][0] == "flatten"


def test_a_frozen_prefix_with_batchnorm_caches_only_in_eval_mode():
    # layer4 and the head train; conv1 ... layer3 hold frozen BatchNorm layers.
    freeze = "late"
    assert [name for name, _ in _plan("resnet18", freeze).suffix][:2] == ["layer4.0", "layer4.1"]
    refused = _plan("resnet18", freeze, {"bn_frozen": "train"})
    assert not refused.use and "BatchNorm runs in train mode" in refused.reason and "(bn1)" in refused.reason


def test_batchnorm_without_running_statistics_in_the_prefix_is_refused():
    settings = make_settings("resnet18", {"bn_frozen": "eval"}, "late", RGB_INPUT)
    net = models.build_model("resnet18", 10, 3, 32)
    models.apply_freeze(net, "resnet18", settings["trainable"])
    net.layer2[0].bn1.track_running_stats = False  # normalises every batch by its own statistics, even in eval
    plan = feature_cache.plan(settings, net)
    assert not plan.use and "(layer2.0) normalises with the statistics of each batch" in plan.reason


@pytest.mark.parametrize("model, freeze, size, channels_last", [
    ("squeezenet1_1", SEED004_LEVEL2, 48, False),
    ("squeezenet1_1", SEED004_LEVEL2, 48, True),  # the cache keeps the memory format the prefix emits
    # BatchNorm in the trained suffix updates its statistics as usual.
    pytest.param("resnet18", "late", 32, False, marks=pytest.mark.slow),
])
def test_the_trained_suffix_is_identical_to_uncached_training(model, freeze, size, channels_last, data_file,
                                                              tmp_path, caplog):
    recipe = {"optimizer": "adam", "lr": 1e-3, "epochs": 2, "bn_frozen": "eval"}
    speed = {"channels_last": channels_last}
    caplog.set_level(logging.INFO, logger="cnnrepro")
    cached = run(make_settings(model, {**recipe, "feature_cache": True}, freeze, {**RGB_INPUT, "size": size},
                               speed=speed), data_file, tmp_path / "cached")
    assert "feature cache: on — the trained stages" in caplog.text and "training runs" in caplog.text
    plain = run(make_settings(model, {**recipe, "feature_cache": False}, freeze, {**RGB_INPUT, "size": size},
                              speed=speed), data_file, tmp_path / "plain")
    assert cached["speed"]["feature_cache"] is True and plain["speed"]["feature_cache"] is False
    a, b = weights(tmp_path / "cached"), weights(tmp_path / "plain")
    assert a.keys() == b.keys() == models.build_model(model, 10, 3, size).state_dict().keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit for bit, the trained suffix and the untouched prefix
    torch.manual_seed(0)  # the run's seed: its initial weights
    initial = build_run_model(make_settings(model, recipe, freeze, {**RGB_INPUT, "size": size})).state_dict()
    trained = [k for k in a if not torch.equal(a[k], initial[k])]
    assert trained and all(k.startswith(("features.11.", "features.12.", "classifier.1.", "layer4.", "fc."))
                           for k in trained)
    assert history_rows(tmp_path / "cached") == history_rows(tmp_path / "plain")
    ignore = (*VOLATILE, "speed", "settings")  # settings: recipe.feature_cache
    assert {k: v for k, v in cached.items() if k not in ignore} == {k: v for k, v in plain.items() if k not in ignore}


@pytest.mark.parametrize("recipe, augment, freeze, reason", [
    pytest.param({"bn_frozen": "train"}, "none", "late", "BatchNorm runs in train mode", marks=pytest.mark.slow),
    ({}, "flip", SEED004_LEVEL2, "the training batches are augmented (augment: flip)"),
    ({}, "none", "none", "every module trains (trainable: all)"),
    ({"feature_cache": False}, "none", SEED004_LEVEL2, "recipe.feature_cache is false"),
])
def test_the_log_says_when_and_why_caching_is_refused(recipe, augment, freeze, reason, data_file, tmp_path, caplog):
    model = "resnet18" if freeze == "late" else "squeezenet1_1"
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    record = run(make_settings(model, {"epochs": 1, "batch_size": 128, **recipe}, freeze, SQUEEZE_INPUT, augment),
                 data_file, tmp_path)
    assert f"feature cache: off — {reason}" in caplog.text
    assert record["speed"]["feature_cache"] is False and reason in record["speed"]["feature_cache_reason"]


def test_stages_that_do_not_reproduce_the_model_are_refused(data_file, tmp_path, monkeypatch, caplog):
    spec = models.get_spec("squeezenet1_1")
    # A registration that forgot a max pool: its prefix output has the wrong shape.
    broken = models.FeatureSplit(lambda m: [(n, s) for n, s in spec.feature_split.stages(m) if n != "features.2"])
    monkeypatch.setitem(registry._REGISTRY, "squeezenet1_1", dataclasses.replace(spec, feature_split=broken))
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    record = run(make_settings("squeezenet1_1", {"epochs": 1}, SEED004_LEVEL2, SQUEEZE_INPUT), data_file, tmp_path)
    assert "do not reproduce the model's output" in caplog.text and record["speed"]["feature_cache"] is False


def test_train_module_is_the_suffix_only(data_file, tmp_path):
    # What the epoch loop runs: the suffix modules, sharing the model's parameters (so the optimizer trains them).
    settings = make_settings("squeezenet1_1", {"epochs": 1}, SEED004_LEVEL2, SQUEEZE_INPUT)
    run_state = train.set_up(settings, data_file, train.RunOutputs(*(tmp_path / n for n in (
        "w.pt", "h.csv", "m.json", "c.pt"))), None, 1)
    stage = feature_cache.build_stage(settings, run_state.model, run_state.splits, run_state.speed,
                                      run_state.device, run_state.eval_batch)
    assert stage.cached and stage.splits["train"].x.shape[1:] == (384, 2, 2)  # fire7's output at 48 px
    model_params = {id(p) for p in run_state.model.parameters()}
    assert {id(p) for p in stage.net.parameters()} <= model_params
    assert {id(p) for p in stage.net.parameters() if p.requires_grad} == {id(p) for p in run_state.trainable}
