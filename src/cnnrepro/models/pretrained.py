"""torchvision ImageNet models with a new classifier head, and offline handling of their weights.

Weights are fetched once (``fetch_weights``, needs internet) into a weights directory and are
afterwards only read from there, so training jobs never touch the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# torchvision weight enum members used by the studies. IMAGENET1K_V1 everywhere: it is what
# the old `pretrained=True` gave (torchvision's DEFAULT for ResNet50 is the different V2).
PRETRAINED_WEIGHTS: dict[str, str] = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "squeezenet1_1": "SqueezeNet1_1_Weights.IMAGENET1K_V1",
}

def _tvm():
    # Imported on first use: torchvision.models costs ~2 s, which every CIFAR/KMNIST job would pay.
    import torchvision.models as tvm

    return tvm


def _constructor(name: str) -> Callable[..., nn.Module]:
    return getattr(_tvm(), name)

# Dotted path of the module that build_torchvision replaces with a fresh num_classes head.
HEADS: dict[str, str] = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "squeezenet1_1": "classifier.1",
}


def _check_name(name: str) -> None:
    if name not in PRETRAINED_WEIGHTS:
        raise KeyError(f"no pretrained weights for model {name!r}; available: {', '.join(PRETRAINED_WEIGHTS)}")


def weights_url(name: str) -> str:
    """Download URL of the ImageNet weights for ``name``."""
    _check_name(name)
    return _tvm().get_weight(PRETRAINED_WEIGHTS[name]).url


def weights_file(name: str, weights_dir: str | os.PathLike) -> Path:
    """Where the weights live: torchvision's file name (e.g. resnet18-f37072fd.pth) in ``weights_dir``."""
    return Path(weights_dir) / weights_url(name).rsplit("/", 1)[-1]


def fetch_weights(name: str, weights_dir: str | os.PathLike) -> Path:
    """Download the weights into ``weights_dir`` unless already there; return the file path.

    The hash prefix in torchvision's file name is checked on download.
    """
    path = weights_file(name, weights_dir)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.load_state_dict_from_url(
                weights_url(name), model_dir=str(path.parent), check_hash=True, progress=True
            )
        except OSError as error:  # URLError and socket errors: no network here
            raise FileNotFoundError(
                f"Could not download the pretrained weights for {name!r} ({error}). {_how_to_get(name, path)}"
            ) from error
    return path


def _how_to_get(name: str, path: Path) -> str:
    return (
        f"Expected file {path.name} in directory {path.parent.resolve()}. Run snakemake once on a machine "
        f"with internet (its fetch_weights rule downloads it), or download {weights_url(name)} and save it "
        f"as {path.resolve()}; or set `limits: {{pretrained: false}}` to train from scratch."
    )


def load_weights(name: str, weights_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the state dict from ``weights_dir`` without touching the network."""
    path = weights_file(name, weights_dir)
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained weights for {name!r} not found. {_how_to_get(name, path)}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    """Swap the ImageNet classifier for a freshly initialised one with ``num_classes`` outputs."""
    if HEADS[name] == "fc":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        # SqueezeNet v1.1: Dropout(0.5) → conv10 → ReLU → global pool; only conv10 is replaced.
        model.classifier[1] = nn.Conv2d(model.classifier[1].in_channels, num_classes, kernel_size=1)
        model.num_classes = num_classes


def build_torchvision(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """torchvision ``name`` (1000-class ImageNet layout), optionally with ImageNet weights, new head."""
    _check_name(name)
    model = _constructor(name)(weights=None)
    if pretrained:
        if weights_dir is None:
            raise ValueError(f"pretrained=True for {name!r} needs weights_dir (weights are loaded offline)")
        model.load_state_dict(load_weights(name, weights_dir))
    replace_head(model, name, num_classes)
    return model
