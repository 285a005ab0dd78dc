"""Adding a model is one file with one registration: a toy model registered here trains through the real
config path (schema check, run settings, the training engine) without touching any other file."""

import pytest
import torch
from torch import nn

from cnnrepro import config as cfg
from cnnrepro import models
from cnnrepro.data import compact, sources
from cnnrepro.engine import train


class ToyMLP(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def toy_config(recipe: dict | None = None) -> dict:
    study = {"datasets": ["mnist"], "models": ["toy_mlp"], "input": {"normalization": "mnist"},
             "recipe": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 3, **(recipe or {})}}
    return {"studies": {"toy": study}, "device": "cpu"}


@pytest.fixture
def toy_model():
    @models.register_model("toy_mlp", head="head", input_size=28, channels=1, options=("hidden",))
    def toy_mlp(num_classes: int, in_channels: int = 1, input_size: int = 28, hidden: int = 64) -> nn.Module:
        return ToyMLP(num_classes, in_channels, input_size, hidden)

    yield "toy_mlp"
    models.unregister_model("toy_mlp")


def test_an_unregistered_model_name_is_a_config_error_naming_the_field():
    with pytest.raises(cfg.ConfigError, match=r"'studies.toy.models\[0\]'.*toy_mlp.*valid values: .*resnet18"):
        cfg.validate(toy_config())


def test_a_registered_toy_model_trains_through_the_config_path(toy_model, tmp_path):
    torch_threads = torch.get_num_threads()
    config = cfg.validate(toy_config())
    (run_id, settings), = cfg.settings_by_run(config).items()
    assert run_id == "toy/mnist/toy_mlp/none/base/seed0" and settings["in_channels"] == 1
    data = tmp_path / "mnist.pt"
    compact.write_compact(sources.make_synthetic("mnist", 256, 128), data, {"dataset": "mnist"})
    outputs = train.RunOutputs(tmp_path / "w.pt", tmp_path / "h.csv", tmp_path / "m.json", tmp_path / "c.pt")
    try:
        record = train.train_run(settings, data, outputs, threads=1)
    finally:
        torch.set_num_threads(torch_threads)
    assert record["status"] == "ok" and record["epochs_run"] == 3
    assert record["params_total"] == 28 * 28 * 64 + 64 + 64 * 10 + 10
    assert record["test"]["top1"] > 0.5  # chance is 0.1: it learned the synthetic classes
    assert record["speed"]["feature_cache"] is False and "(trainable: all)" in record["speed"]["feature_cache_reason"]


def test_a_registered_model_option_reaches_its_builder(toy_model):
    assert models.count_params(models.build_model(toy_model, 10, options={"hidden": 8})) == 28 * 28 * 8 + 8 + 90
    with pytest.raises(ValueError, match="accepted options: hidden"):
        models.build_model(toy_model, 10, options={"width": 8})
