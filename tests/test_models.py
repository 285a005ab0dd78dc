"""Model zoo tests: exact parameter counts the papers print, shapes, init, freezing, offline weights.

No test touches the network; pretrained weights are faked with randomly initialised state dicts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from cnnrepro.models import (
    apply_freeze,
    build_model,
    count_params,
    get_spec,
    load_weights,
    model_names,
    pretrained,
    set_bn_mode,
    weights_file,
)

CIFAR_COUNTS = {  # (10 classes, 100 classes), seed 002 Tabelas 1-5
    "squeezenet": (746_638, 792_988),
    "squeezenet_dsc": (248_670, 295_020),
    "mobilenet": (3_217_226, 3_309_476),
    "alexnet": (35_871_562, 36_240_292),
    "vgg19": (20_040_522, 20_086_692),
}
TEN_CLASS_COUNTS = {
    "resnet18_cifar": (11_173_962, 3),
    "cnn": (1_199_882, 1),
    "cnn_nopool": (4_738_826, 1),
    "fcnn": (1_333_770, 1),
    "resnet18": (11_181_642, 3),
    "resnet34": (21_289_802, 3),
    "resnet50": (23_528_522, 3),
    "squeezenet1_1": (727_626, 3),
}


@pytest.fixture(autouse=True)
def _no_network(no_downloads):
    torch.manual_seed(0)


def test_names_and_specs():
    from cnnrepro.models import zoo

    # The built-ins (zoo models register as a study names them, and may have in this process).
    assert {name for name in model_names() if not zoo.is_zoo_name(name)} == set(CIFAR_COUNTS) | set(TEN_CLASS_COUNTS)
    assert get_spec("resnet50").pretrained_weights == "ResNet50_Weights.IMAGENET1K_V1"
    assert get_spec("squeezenet1_1").pretrained_weights == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert get_spec("squeezenet1_1").head == "classifier.1"
    assert get_spec("resnet18").head == "fc"
    assert get_spec("cnn").channels == 1 and get_spec("cnn").input_size == 28
    assert get_spec("resnet18").feature_split is not None and get_spec("resnet18_cifar").feature_split is None


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: .*squeezenet_dsc"):
        get_spec("resnet19")
    with pytest.raises(KeyError, match="resnet19"):
        build_model("resnet19", 10)


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_cifar_counts(name):
    for num_classes, expected in zip((10, 100), CIFAR_COUNTS[name]):
        assert count_params(build_model(name, num_classes)) == expected


@pytest.mark.parametrize("name", sorted(TEN_CLASS_COUNTS))
def test_ten_class_counts(name):
    expected, channels = TEN_CLASS_COUNTS[name]
    assert count_params(build_model(name, 10, in_channels=channels)) == expected


def test_buffers_not_counted_and_trainable_only():
    model = build_model("squeezenet", 10)
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers > 0 and count_params(model) == 746_638
    model.features.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 5_150  # conv10 + BN(10)


@pytest.mark.parametrize("name", ["squeezenet", "squeezenet_dsc", "mobilenet", "alexnet", "vgg19", "resnet18_cifar"])
def test_cifar_forward_shape(name):
    model = build_model(name, 100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["cnn", "cnn_nopool", "fcnn"])
def test_kmnist_forward_shape_and_channels(name):
    model = build_model(name, 10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert first.weight.shape[1] in (1, 784)  # conv in_channels or flattened 1×28×28


def test_in_channels_honoured_for_cifar_models():
    model = build_model("resnet18_cifar", 10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="3-channel"):
        build_model("resnet18", 10, in_channels=1)


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet50", 32), ("squeezenet1_1", 48)])
def test_torchvision_forward_small_input(name, size):
    model = build_model(name, 10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_torchvision_forward_224_once():
    model = build_model("squeezenet1_1", 10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_squeezenet1_1_head_keeps_dropout():
    model = build_model("squeezenet1_1", 10)
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.5
    head = model.classifier[1]
    assert isinstance(head, nn.Conv2d) and (head.in_channels, head.out_channels, head.kernel_size) == (512, 10, (1, 1))


def test_dsc_final_relu_option():
    default = build_model("squeezenet_dsc", 10)
    with_relu = build_model("squeezenet_dsc", 10, options={"dsc_final_relu": True})
    fire = default.features[3]
    assert isinstance(fire.expand3x3[-1], nn.BatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fire.expand3x3[:2])  # no BN after depthwise conv
    assert isinstance(with_relu.features[3].expand3x3[-1], nn.ReLU)
    assert count_params(with_relu) == count_params(default) == 248_670


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="dsc_final_relu"):
        build_model("squeezenet", 10, options={"dsc_final_relu": True})
    with pytest.raises(ValueError, match="'dropout'"):
        build_model("cnn", 10, in_channels=1, options={"dropout": 0.1})


def test_legacy_bn_init_option():
    model = build_model("mobilenet", 10, options={"legacy_bn_init": True})
    gammas = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert 0.0 <= gammas.min() and gammas.max() <= 1.0 and gammas.std() > 0.1


@pytest.mark.parametrize("name", ["squeezenet", "squeezenet_dsc"])
def test_squeezenet_init(name):
    model = build_model(name, 10)
    final = model.classifier[0]
    assert torch.all(final.bias == 0)
    assert 0.007 < final.weight.std().item() < 0.013  # N(0, 0.01)
    for conv in model.modules():
        if not isinstance(conv, nn.Conv2d) or conv is final:
            continue
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]  # full in_channels, even depthwise
        bound = math.sqrt(6 / fan_in)
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.9 * bound
        assert conv.bias is None or torch.all(conv.bias == 0)


def test_kmnist_keras_init():
    for module in build_model("cnn", 10, in_channels=1).modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            receptive = module.weight[0, 0].numel()
            fan_in, fan_out = module.weight.shape[1] * receptive, module.weight.shape[0] * receptive
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.9 * bound
            assert torch.all(module.bias == 0)


def test_kmnist_dropout_rates():
    cnn = build_model("cnn_nopool", 10, in_channels=1)
    assert [m.p for m in cnn.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert not any(isinstance(m, nn.MaxPool2d) for m in cnn.modules())
    fcnn = build_model("fcnn", 10, in_channels=1)
    assert [m.p for m in fcnn.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]


def test_alexnet_uses_ceil_pools_and_bn1d():
    model = build_model("alexnet", 10)
    assert all(m.ceil_mode for m in model.modules() if isinstance(m, nn.MaxPool2d))
    assert model.classifier[0].in_features == 256 * 4 * 4
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2


@pytest.mark.parametrize(
    "name,expected", [("resnet18", 5_130), ("resnet34", 5_130), ("resnet50", 20_490)]
)
def test_seed000_head_only(name, expected):
    model = build_model(name, 10)
    apply_freeze(model, name, ["head"])
    assert count_params(model, trainable_only=True) == expected
    assert all(p.requires_grad for p in model.fc.parameters())


@pytest.mark.parametrize(
    "trainable,expected",
    [(["head"], 5_130), (["features.11", "features.12", "head"], 391_306), ("all", 727_626)],
)
def test_seed004_freeze_levels(trainable, expected):
    model = build_model("squeezenet1_1", 10)
    apply_freeze(model, "squeezenet1_1", ["head"])  # levels must not depend on earlier calls
    apply_freeze(model, "squeezenet1_1", trainable)
    assert count_params(model, trainable_only=True) == expected
    assert count_params(model) == 727_626


def test_bad_freeze_prefix():
    model = build_model("squeezenet1_1", 10)
    with pytest.raises(ValueError, match=r"'features\.99'.*features, classifier"):
        apply_freeze(model, "squeezenet1_1", ["features.99"])
    with pytest.raises(ValueError, match="all"):
        apply_freeze(model, "squeezenet1_1", "head")  # a bare string other than "all"


def test_set_bn_mode_only_touches_frozen_bn():
    model = build_model("resnet18_cifar", 10)
    apply_freeze(model, "resnet18_cifar", ["layer4", "head"])
    model.train()
    set_bn_mode(model, "train")
    assert all(m.training for m in model.modules())
    set_bn_mode(model, "eval")
    assert not model.bn1.training and not model.layer3[1].bn2.training
    assert model.layer4[0].bn1.training and model.linear.training and model.training

    frozen_stats = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, frozen_stats)
    with pytest.raises(ValueError):
        set_bn_mode(model, "frozen")


def test_weights_file_names(tmp_path):
    expected = {
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    }
    for name, file_name in expected.items():
        assert weights_file(name, tmp_path) == tmp_path / file_name


def test_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        build_model("resnet18", 10, pretrained=True, weights_dir=tmp_path)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path.resolve()) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "fetch_weights" in message and "internet" in message and "pretrained: false" in message


def test_fetch_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    import urllib.error

    from cnnrepro.models import fetch_weights

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(FileNotFoundError) as info:
        fetch_weights("squeezenet1_1", tmp_path)
    message = str(info.value)
    assert "squeezenet1_1-b8a52dc0.pth" in message and str(tmp_path.resolve()) in message
    assert "Name or service not known" in message


@pytest.mark.parametrize(
    "name,constructor", [("resnet18", torchvision.models.resnet18), ("squeezenet1_1", torchvision.models.squeezenet1_1)]
)
def test_pretrained_loads_local_file_and_replaces_head(tmp_path, name, constructor, monkeypatch):
    # Fake weights cannot match the sha256 prefix in torchvision's file name (tests/test_faults_inputs.py
    # checks that a mismatch is refused); here only the loading is under test.
    monkeypatch.setattr(pretrained, "check_hash", lambda path: None)
    fake = constructor(weights=None).state_dict()
    torch.save(fake, weights_file(name, tmp_path))

    model = build_model(name, 10, pretrained=True, weights_dir=tmp_path)
    state = model.state_dict()
    backbone_key = "conv1.weight" if name == "resnet18" else "features.0.weight"
    assert torch.equal(state[backbone_key], fake[backbone_key])
    assert torch.equal(load_weights(name, tmp_path)[backbone_key], fake[backbone_key])
    head = model.fc if name == "resnet18" else model.classifier[1]
    assert head.weight.shape[0] == 10
    assert count_params(model) == TEN_CLASS_COUNTS[name][0]


def test_pretrained_requires_weights_dir_and_support():
    with pytest.raises(ValueError, match="weights_dir"):
        build_model("resnet18", 10, pretrained=True)
    with pytest.raises(ValueError, match="from scratch"):
        build_model("vgg19", 10, pretrained=True)
