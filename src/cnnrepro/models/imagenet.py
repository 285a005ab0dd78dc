"""torchvision ImageNet models (ResNet18/34/50, SqueezeNet 1.1) with a new classifier head.

Weights are IMAGENET1K_V1 everywhere: what the old ``pretrained=True`` gave (torchvision's DEFAULT for
ResNet50 is the different V2). They are read offline by ``build_model`` (see pretrained.py).
"""

from __future__ import annotations

from torch import nn

from .registry import FeatureSplit, register_model


def _tvm():
    import torchvision.models as tvm  # deferred: torchvision takes ~2 s to import; CIFAR/KMNIST jobs never need it

    return tvm



def _resnet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    # torchvision ResNet.forward, block by block; torch.flatten(x, 1) before fc is nn.Flatten(1).
    blocks = [(f"{layer}.{i}", block) for layer in ("layer1", "layer2", "layer3", "layer4")
              for i, block in enumerate(getattr(m, layer))]
    return [("conv1", m.conv1), ("bn1", m.bn1), ("relu", m.relu), ("maxpool", m.maxpool), *blocks,
            ("avgpool", m.avgpool), ("flatten", nn.Flatten(1)), ("fc", m.fc)]


def _squeezenet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    # features.0-12 (conv1, pools, fire2-fire9), then Dropout -> conv10 -> ReLU -> pool and SqueezeNet.forward's
    # flatten. The classifier's dropout falls into the trained suffix, so it draws from the same global RNG
    # stream on cached features as on the full model.
    return [*((f"features.{i}", layer) for i, layer in enumerate(m.features)),
            *((f"classifier.{i}", layer) for i, layer in enumerate(m.classifier)), ("flatten", nn.Flatten(1))]


RESNET_SPLIT = FeatureSplit(_resnet_stages)
SQUEEZENET_SPLIT = FeatureSplit(_squeezenet_stages)


def _imagenet_model(constructor: str, imagenet_state: dict | None) -> nn.Module:
    model = getattr(_tvm(), constructor)(weights=None)
    if imagenet_state is not None:
        model.load_state_dict(imagenet_state)
    return model


def _new_head(head: nn.Module, keras_init: bool) -> nn.Module:
    # Keras initialises a new Dense/Conv2D with glorot-uniform kernels and zero biases (seed 004's new conv10);
    # PyTorch's default is a kaiming-uniform variant, which the PyTorch studies (seed 000) got.
    if keras_init:
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)
    return head


KERAS_HEAD_INIT = "keras_head_init"


def _register_resnet(name: str, weights: str) -> None:
    @register_model(name, head="fc", input_size=224, channels=3, pretrained_weights=weights,
                    feature_split=RESNET_SPLIT, options=(KERAS_HEAD_INIT,))
    def build(num_classes: int, in_channels: int = 3, input_size: int = 224, imagenet_state=None,
              keras_head_init: bool = False) -> nn.Module:
        model = _imagenet_model(name, imagenet_state)
        model.fc = _new_head(nn.Linear(model.fc.in_features, num_classes), keras_head_init)
        return model


for _name, _weights in (("resnet18", "ResNet18_Weights.IMAGENET1K_V1"), ("resnet34", "ResNet34_Weights.IMAGENET1K_V1"),
                        ("resnet50", "ResNet50_Weights.IMAGENET1K_V1")):
    _register_resnet(_name, _weights)


@register_model("squeezenet1_1", head="classifier.1", input_size=224, channels=3,
                pretrained_weights="SqueezeNet1_1_Weights.IMAGENET1K_V1", feature_split=SQUEEZENET_SPLIT,
                options=(KERAS_HEAD_INIT,))
def squeezenet1_1(num_classes: int, in_channels: int = 3, input_size: int = 224, imagenet_state=None,
                  keras_head_init: bool = False) -> nn.Module:
    model = _imagenet_model("squeezenet1_1", imagenet_state)
    # Dropout(0.5) → conv10 → ReLU → global pool; only conv10 is replaced.
    model.classifier[1] = _new_head(nn.Conv2d(model.classifier[1].in_channels, num_classes, kernel_size=1),
                                    keras_head_init)
    model.num_classes = num_classes
    return model
