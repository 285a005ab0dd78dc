"""Model zoo: from-scratch CIFAR and KMNIST networks plus torchvision ImageNet models."""

from .alexnet_cifar import AlexNetCIFAR
from .kmnist import FCNN, KMNISTCNN
from .mobilenet_cifar import MobileNetCIFAR
from .pretrained import fetch_weights, load_weights, weights_file, weights_url
from .registry import (
    MODEL_NAMES,
    ModelSpec,
    apply_freeze,
    build_model,
    count_params,
    get_spec,
    set_bn_mode,
)
from .resnet_cifar import ResNetCIFAR
from .squeezenet_cifar import Fire, SqueezeNetCIFAR
from .vgg_cifar import VGGCIFAR

__all__ = [
    "MODEL_NAMES",
    "ModelSpec",
    "get_spec",
    "build_model",
    "count_params",
    "apply_freeze",
    "set_bn_mode",
    "weights_file",
    "weights_url",
    "fetch_weights",
    "load_weights",
    "AlexNetCIFAR",
    "FCNN",
    "Fire",
    "KMNISTCNN",
    "MobileNetCIFAR",
    "ResNetCIFAR",
    "SqueezeNetCIFAR",
    "VGGCIFAR",
]
