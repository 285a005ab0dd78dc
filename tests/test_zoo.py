"""torchvision's model zoo by name (``torchvision.<builder>``): what the registry knows of a built-in model is derived
for any of them (head, native input and normalisation, weights, parameter counts, freeze levels), checked here on
the meta device for several families; weights are read offline, a member can be chosen, bad names are refused.
No test touches the network: weights are faked with randomly initialised state dicts under torchvision's names."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from cnnrepro import config as cfg
from cnnrepro import models, startup
from cnnrepro.models import pretrained, zoo
from tests.test_e2e import REPO

# One builder per family, its classifier as torchvision defines it, and its default weights' input side.
FAMILIES = {
    "resnet18": ("fc", 224),
    "densenet121": ("classifier", 224),
    "efficientnet_b0": ("classifier.1", 224),
    "mobilenet_v3_small": ("classifier.3", 224),
    "vgg11": ("classifier.6", 224),
    "vit_b_16": ("heads.head", 224),
}


pytestmark = pytest.mark.usefixtures("no_downloads")


@pytest.mark.parametrize("builder", sorted(FAMILIES))
def test_a_zoo_model_gets_its_head_input_weights_and_parameter_count_from_torchvision(builder):
    name = f"torchvision.{builder}"
    spec = models.get_spec(name)  # registered on first use
    head, side = FAMILIES[builder]
    weights = torchvision.models.get_model_weights(builder).DEFAULT
    assert (spec.head, spec.input_size, spec.channels) == (head, side, 3)
    assert spec.pretrained_weights == f"{type(weights).__name__}.{weights.name}"
    # With torchvision's 1000-class head, exactly the parameters its weights' meta counts.
    assert models.count_params(models.build_on_meta(name, 1000)) == weights.meta["num_params"]
    model = models.build_on_meta(name, 10, 3, 64)
    assert next(model.parameters()).device.type == "meta"
    assert model.get_submodule(head).weight.shape[0] == 10  # the head is sized for the study's classes
    models.apply_freeze(model, name, ["head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.weight", f"{head}.bias"}
    first = next(n for n, _ in model.named_children())
    models.apply_freeze(model, name, [first, "head"])  # a module prefix, as a freeze level names it
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {first, head.split(".")[0]}


def test_every_torchvision_classification_builder_is_a_valid_name_and_nothing_else_is():
    names = zoo.builder_names()
    assert {"densenet121", "efficientnet_b0", "mobilenet_v3_small", "vit_b_16", "convnext_tiny"} <= set(names)
    assert not any(name.startswith(("fasterrcnn", "deeplab", "r3d", "quantized")) for name in names)
    with pytest.raises(zoo.UnknownZooModel, match=r"'torchvision.densenet12' is not one of .*closest: "
                                                  r"torchvision.densenet121"):
        zoo.register("torchvision.densenet12")
    with pytest.raises(KeyError, match="unknown model 'torchvision.fasterrcnn_resnet50_fpn'"):
        models.get_spec("torchvision.fasterrcnn_resnet50_fpn")  # detection: not a classifier


def test_families_that_fix_the_image_size_at_build_take_the_runs_size():
    vit = models.build_model("torchvision.vit_b_16", 5, input_size=32)
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    inception = models.build_model("torchvision.inception_v3", 5, input_size=80).train()
    assert isinstance(inception(torch.zeros(2, 3, 80, 80)), torch.Tensor)  # no auxiliary logits in train mode
    assert models.build_on_meta("torchvision.regnet_x_400mf", 5).fc.out_features == 5  # reads values as it builds


def test_a_named_weights_member_chooses_the_file_the_input_and_the_record(tmp_path):
    v1 = {"weights": "IMAGENET1K_V1"}
    # The enum's default (V2 for ResNet50; the built-in resnet50 keeps the V1 its paper used) or the named member.
    assert models.weights_name("torchvision.resnet50") == "ResNet50_Weights.IMAGENET1K_V2"
    assert models.weights_name("torchvision.resnet50", v1) == "ResNet50_Weights.IMAGENET1K_V1"
    assert models.weights_file("torchvision.resnet50", tmp_path).name == "resnet50-11ad3fa6.pth"
    assert models.weights_file("torchvision.resnet50", tmp_path, v1) == models.weights_file("resnet50", tmp_path)
    assert models.weights_transforms("torchvision.vit_b_16", {"weights": "IMAGENET1K_SWAG_E2E_V1"})[0] == 384
    with pytest.raises(ValueError, match="its members: IMAGENET1K_V1, IMAGENET1K_V2"):
        models.weights_member("torchvision.resnet50", {"weights": "IMAGENET1K_V3"})


def _old_densenet_keys(state: dict) -> dict:
    """What torchvision's DenseNet checkpoints hold: norm1 named 'norm.1' (and so on), no num_batches_tracked."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
            for key, value in state.items() if not key.endswith("num_batches_tracked")}


def test_pretrained_zoo_weights_are_read_offline_with_a_new_head(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "check_hash", lambda path: None)  # fake weights cannot match the hash prefix
    fake = torchvision.models.densenet121(weights=None).state_dict()
    assert _old_densenet_keys(fake) != fake
    torch.save(_old_densenet_keys(fake), models.weights_file("torchvision.densenet121", tmp_path))
    model = models.build_model("torchvision.densenet121", 7, pretrained=True, weights_dir=tmp_path)
    state = model.state_dict()
    assert torch.equal(state["features.denseblock1.denselayer1.norm1.weight"],
                       fake["features.denseblock1.denselayer1.norm1.weight"])
    assert state["classifier.weight"].shape == (7, 1024)  # a new head for 7 classes
    with pytest.raises(FileNotFoundError, match=r"densenet169-b2777c0a.pth.*download.pytorch.org"):
        models.build_model("torchvision.densenet169", 7, pretrained=True, weights_dir=tmp_path)


def test_the_fetch_rule_finds_a_zoo_models_weights_by_their_file_name(tmp_path):
    """The fetch_weights job runs in a process that has not registered the study's zoo models."""
    with pytest.raises(FileNotFoundError, match=r"'torchvision.efficientnet_b0'.*efficientnet_b0_rwightman-7f5810bc"
                                                 r".pth.*internet"):
        models.fetch_weights_file("efficientnet_b0_rwightman-7f5810bc.pth", tmp_path)
    with pytest.raises(ValueError, match="are called nothing.pth"):
        models.fetch_weights_file("nothing.pth", tmp_path)


def zoo_config(**study) -> dict:
    base = cfg.deep_merge(cfg.load_yaml(REPO / "config.yaml"), cfg.load_yaml(REPO / "presets" / "smoke.yaml"))
    base["studies"] = {"smoke_sanity": base["studies"]["smoke_sanity"]}
    zoo_study = {"datasets": ["cifar10"], "models": ["torchvision.densenet121", "torchvision.mobilenet_v3_small"],
                 "freeze": ["none", "head"], "input": {"size": "model", "rgb": True, "normalization": "model"},
                 "recipe": {"optimizer": "adam", "lr": 1.0e-3, "batch_size": 16, "epochs": 1}}
    return cfg.deep_merge(base, {"studies": {"zoo": {**zoo_study, **study}}})


def test_a_zoo_study_passes_start_up_with_the_weights_own_input_and_plans(monkeypatch, capsys):
    from cnnrepro import cli

    monkeypatch.chdir(REPO)
    checked = startup.check(zoo_config())
    settings = checked.settings["zoo/cifar10/torchvision.densenet121/head/base/seed0"]
    assert settings["input"]["size"] == 32  # 'model' is 224, then the smoke preset's limits.input_size
    assert settings["input"]["mean"] == [0.485, 0.456, 0.406] and settings["trainable"] == ["head"]
    header, rows, studies = cli.plan_tables(checked, "h100", 10)
    by_run = {row["run"]: row for row in rows}
    assert by_run["zoo/cifar10/torchvision.densenet121/none/base/seed0"]["TFLOP"] >= 0
    assert next(s for s in studies if s["study"] == "zoo")["runs"] == 4
    counts = {(r["model"], r["freeze"]): r for r in cli.model_rows(checked.settings)}
    assert counts[("torchvision.densenet121", "head")]["trainable_params"] == 1024 * 10 + 10


def test_pretrained_vit_weights_need_the_size_their_position_embedding_was_made_for(monkeypatch):
    monkeypatch.chdir(REPO)
    config = zoo_config(models=["torchvision.vit_b_16"], pretrained=True)
    config["limits"]["pretrained"] = None
    with pytest.raises(cfg.ConfigError, match=r"'studies.zoo.input.size'.*take 224 px images.*feeds 32 px"):
        startup.check(config)
