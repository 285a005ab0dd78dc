import copy

import pytest

from cnnrepro import config as cfg
from cnnrepro import models
from cnnrepro.data import catalog


def test_default_config_defines_the_five_studies(raw_config):
    config = cfg.validate(raw_config)
    runs = cfg.expand_runs(config)
    per_study = {s: sum(r.study == s for r in runs) for s in config["studies"]}
    assert per_study == {"seed000_resnet_mnist": 3, "seed001_resnet_mobilenet_cifar10": 2,
                         "seed002_squeezenet_dsc": 10, "seed003_kmnist_fcnn_cnn": 5,
                         "seed004_squeezenet_transfer_cifar10": 18}
    assert len({r.id for r in runs}) == len(runs)


def test_run_id_encodes_every_field(raw_config):
    config = cfg.validate(raw_config)
    run = cfg.expand_runs(config, ["seed004_squeezenet_transfer_cifar10"])[-1]
    assert run.id == "seed004_squeezenet_transfer_cifar10/cifar10/squeezenet1_1/none/batch_size-500_epochs-300/seed0"
    assert cfg.settings_by_run(config)[run.id]["run_id"] == run.id


def test_grid_and_exclude(raw_config):
    config = cfg.validate(raw_config)
    seed003 = {(r.model, r.variant) for r in cfg.expand_runs(config, ["seed003_kmnist_fcnn_cnn"])}
    assert ("cnn_nopool", "augment-kmnist10x") not in seed003
    assert ("fcnn", "augment-kmnist10x") in seed003
    settings = cfg.run_settings(config, cfg.Run("seed003_kmnist_fcnn_cnn", "kmnist", "cnn", "none",
                                                "augment-kmnist10x", 42))
    assert settings["augment"] == "kmnist10x" and settings["in_channels"] == 1


def test_variant_overrides_recipe(raw_config):
    config = cfg.validate(raw_config)
    run = cfg.Run("seed004_squeezenet_transfer_cifar10", "cifar10", "squeezenet1_1", "last_two_fire_and_head",
                  "batch_size-500_epochs-150", 0)
    settings = cfg.run_settings(config, run)
    assert settings["recipe"]["batch_size"] == 500 and settings["recipe"]["epochs"] == 150
    assert settings["trainable"] == ["features.11", "features.12", "head"]
    assert settings["eval_split"] == "val" and settings["recipe"]["loss"] == "mse"


def test_limits_cap_epochs_input_and_pretraining(raw_config):
    raw_config["limits"] = {"max_epochs": 2, "input_size": 32, "pretrained": False}
    config = cfg.validate(raw_config)
    r000 = cfg.run_settings(config, cfg.expand_runs(config, ["seed000_resnet_mnist"])[0])
    assert r000["recipe"]["epochs"] == 2 and r000["input"]["size"] == 32 and r000["pretrained"] is False
    r002 = cfg.run_settings(config, cfg.expand_runs(config, ["seed002_squeezenet_dsc"])[0])
    assert r002["recipe"]["max_epochs"] == 2 and r002["input"]["size"] is None
    r004 = cfg.run_settings(config, cfg.expand_runs(config, ["seed004_squeezenet_transfer_cifar10"])[-1])
    assert r004["recipe"]["epochs"] == 2 and r004["grid"] == {"recipe.batch_size": 500, "recipe.epochs": 300}


def test_defaults_are_filled_from_the_schema(raw_config):
    del raw_config["benchmark"]
    config = cfg.validate(raw_config)
    assert config["benchmark"]["runs"] == 100 and config["benchmark"]["exclusive"] is True
    assert config["studies"]["seed001_resnet_mobilenet_cifar10"]["exclude"] == []


@pytest.mark.parametrize("mutate, field, words", [
    (lambda c: c["studies"]["seed000_resnet_mnist"]["models"].__setitem__(0, "resnet19"),
     "studies.seed000_resnet_mnist.models[0]", "resnet19"),
    (lambda c: c["studies"]["seed000_resnet_mnist"]["datasets"].__setitem__(0, "imagenet"),
     "studies.seed000_resnet_mnist.datasets[0]", "imagenet"),
    (lambda c: c["studies"]["seed001_resnet_mobilenet_cifar10"]["recipe"].__setitem__("epochs", -3),
     "studies.seed001_resnet_mobilenet_cifar10.recipe.epochs", "-3"),
    (lambda c: c["studies"]["seed001_resnet_mobilenet_cifar10"]["recipe"].__setitem__("epoch", 3),
     "studies.seed001_resnet_mobilenet_cifar10.recipe", "misspelt"),
    (lambda c: c.__setitem__("devise", "cpu"), "<top level>", "devise"),
    (lambda c: c["studies"]["seed000_resnet_mnist"]["freeze"].__setitem__(0, "backbone"),
     "studies.seed000_resnet_mnist.freeze[0]", "freeze_levels"),
    (lambda c: c["studies"]["seed000_resnet_mnist"]["input"].__setitem__("normalization", "zca"),
     "studies.seed000_resnet_mnist.input.normalization", "zca"),
])
def test_bad_config_names_the_field(raw_config, mutate, field, words):
    mutate(raw_config)
    with pytest.raises(cfg.ConfigError) as error:
        cfg.settings_by_run(cfg.validate(raw_config))
    assert f"'{field}'" in str(error.value)
    assert words in str(error.value)


def test_schema_name_lists_come_from_the_registrations():
    from cnnrepro.data import augment

    schema = cfg.load_schema()
    assert schema["definitions"]["model_name"]["enum"] == list(models.model_names())
    assert schema["definitions"]["augment_name"]["enum"] == list(augment.AUGMENTATIONS)
    # Dataset names: the built-in ones and those a config declares (checked against the config, not the schema).
    assert "enum" not in schema["definitions"]["dataset_name"]
    config = cfg.validate({"data": {"datasets": {"fashion": {"class": "FashionMNIST"}}},
                           "studies": {"s": {"datasets": ["fashion"], "models": ["cnn"],
                                             "recipe": {"lr": 0.1, "batch_size": 1, "epochs": 1}}}})
    assert cfg.dataset_names(config) == (*catalog.DATASETS, "fashion")


def test_optimizers_of_the_schema_are_the_ones_the_engine_builds():
    from cnnrepro.engine.recipe import OPTIMIZERS

    assert set(cfg.recipe_branches()["optimizer"]) == set(OPTIMIZERS)
    assert set(cfg.load_schema()["definitions"]["recipe"]["properties"]["optimizer"]["enum"]) == set(OPTIMIZERS)


@pytest.mark.parametrize("study, key, value, chosen", [
    ("seed002_squeezenet_dsc", "momentum", 0.9, "optimizer 'adam'"),
    ("seed000_resnet_mnist", "betas", [0.9, 0.99], "optimizer 'sgd'"),
    ("seed003_kmnist_fcnn_cnn", "patience", 3, "schedule 'keras_plateau'"),
    ("seed001_resnet_mobilenet_cifar10", "max_epochs", 30, "schedule 'constant'"),
    ("seed002_squeezenet_dsc", "stop_patience", 3, "schedule 'plateau_drop'"),
])
def test_a_recipe_key_the_chosen_optimizer_or_schedule_does_not_use_is_an_error(raw_config, study, key, value,
                                                                                 chosen):
    raw_config["studies"][study]["recipe"][key] = value
    with pytest.raises(cfg.ConfigError) as error:
        cfg.settings_by_run(cfg.validate(raw_config))
    message = str(error.value)
    assert f"'studies.{study}.recipe.{key}'" in message and f"{chosen} does not use '{key}'" in message
    assert "uses:" in message


def test_defaults_are_filled_per_run_for_the_chosen_optimizer_and_schedule(raw_config):
    settings = cfg.settings_by_run(cfg.validate(raw_config))
    seed000 = settings["seed000_resnet_mnist/mnist/resnet18/head/base/seed0"]["recipe"]
    assert seed000["weight_decay"] == 0.0 and "betas" not in seed000 and "max_epochs" not in seed000
    seed002 = settings["seed002_squeezenet_dsc/cifar10/vgg19/none/base/seed0"]["recipe"]
    assert (seed002["betas"], seed002["eps"], seed002["monitor"], seed002["max_drops"]) == ([0.9, 0.999], 1e-8,
                                                                                            "train_loss", 4)
    assert "epochs" not in seed002 and "momentum" not in seed002


def test_grid_values_are_checked_like_the_recipe(raw_config):
    raw_config["studies"]["seed004_squeezenet_transfer_cifar10"]["grid"]["recipe.batch_size"] = [250, 0]
    with pytest.raises(cfg.ConfigError, match=r"'studies.seed004_squeezenet_transfer_cifar10.recipe.batch_size'.*"
                                              r"variant batch_size-0_epochs-50, whose grid sets recipe.batch_size=0"):
        cfg.settings_by_run(cfg.validate(copy.deepcopy(raw_config)))
    raw_config["studies"]["seed004_squeezenet_transfer_cifar10"]["assumptions"] = []  # one names the normalisation
    raw_config["studies"]["seed004_squeezenet_transfer_cifar10"]["grid"] = {"input.normalization": ["cifar10", "zca"]}
    with pytest.raises(cfg.ConfigError, match=r"'studies.seed004_squeezenet_transfer_cifar10.input.normalization'.*"
                                              r"'zca'.*variant normalization-zca"):
        cfg.settings_by_run(cfg.validate(copy.deepcopy(raw_config)))
    raw_config["studies"]["seed004_squeezenet_transfer_cifar10"]["grid"] = {"recipe.batchsize": [250]}
    with pytest.raises(cfg.ConfigError, match="misspelt"):
        cfg.settings_by_run(cfg.validate(raw_config))


@pytest.mark.parametrize("cap", [1, 3, 100, 1000])
def test_any_epoch_cap_works_for_every_run(raw_config, cap):
    from cnnrepro.engine.schedules import make_schedule

    raw_config["limits"] = {"max_epochs": cap}
    for run_id, settings in cfg.settings_by_run(cfg.validate(raw_config)).items():
        recipe = settings["recipe"]
        length = recipe[cfg.run_length_key(recipe)]
        schedule = make_schedule(recipe)  # a cap must never make a recipe the schedule refuses
        # The uncapped length: the grid's value, else the study's, else the schema's default for the schedule.
        uncapped = cfg.check_recipe({**raw_config["studies"][settings["study"]]["recipe"],
                                     **{k.split(".", 1)[1]: v for k, v in settings["grid"].items()
                                        if k.startswith("recipe.")}}, "r")
        assert length == min(cap, uncapped[cfg.run_length_key(uncapped)]), run_id
        assert schedule.length == length


def test_presets_validate(raw_config):
    for preset in ("presets/smoke.yaml", "presets/quick.yaml"):
        config = cfg.validate(cfg.deep_merge(raw_config, cfg.load_yaml(preset)))
        assert cfg.expand_runs(config)


def test_model_options_reach_the_builders_and_change_the_model(raw_config):
    import torch
    from torch import nn

    from cnnrepro.engine.recipe import build_run_model

    settings = cfg.settings_by_run(cfg.validate(raw_config))

    def built(run_id: str, with_options: bool):
        s = settings[run_id]
        torch.manual_seed(0)
        return build_run_model(s if with_options else {**s, "model_options": {}}, pretrained=False)

    # Seed 002: PyTorch 0.3's BatchNorm init, gamma ~ U(0, 1) instead of 1.
    for model in ("squeezenet", "squeezenet_dsc", "mobilenet", "alexnet", "vgg19"):
        run_id = f"seed002_squeezenet_dsc/cifar10/{model}/none/base/seed0"
        assert settings[run_id]["model_options"]["legacy_bn_init"] is True
        gammas = [m.weight for m in built(run_id, True).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert gammas and all(g.min() >= 0 and g.max() <= 1 for g in gammas)
        assert not all(torch.all(g == 1) for g in gammas)
        assert all(torch.all(m.weight == 1) for m in built(run_id, False).modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
    # Seed 004: the new Keras conv10 is glorot-uniform with zero bias (PyTorch's default bound is 1/sqrt(fan_in)).
    run_id = "seed004_squeezenet_transfer_cifar10/cifar10/squeezenet1_1/none/batch_size-250_epochs-50/seed0"
    keras, default = built(run_id, True).classifier[1], built(run_id, False).classifier[1]
    glorot_bound = (6 / (512 + 10)) ** 0.5
    assert torch.all(keras.bias == 0) and keras.weight.abs().max() > 512 ** -0.5 >= default.weight.abs().max()
    assert keras.weight.abs().max() <= glorot_bound and not torch.all(default.bias == 0)


def test_an_option_the_model_does_not_take_is_a_config_error(raw_config):
    raw_config["studies"]["seed001_resnet_mobilenet_cifar10"]["model_options"] = {"mobilenet": {"dsc_final_relu": True}}
    with pytest.raises(cfg.ConfigError, match=r"'studies.seed001_resnet_mobilenet_cifar10.model_options.mobilenet"
                                              r".dsc_final_relu'.*accepts: legacy_bn_init"):
        cfg.settings_by_run(cfg.validate(raw_config))
