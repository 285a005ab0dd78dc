"""Offline handling of the ImageNet weights of the torchvision models (see imagenet.py).

Weights are fetched once (``fetch_weights``, needs internet) into a weights directory and are
afterwards only read from there, so training jobs never touch the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..runtime.io import sha256_file
from . import zoo
from .registry import get_spec, model_names

# torchvision's weight file names: <name>-<hash prefix>.pth (e.g. resnet18-f37072fd.pth).
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")


def _tvm():
    import torchvision.models as tvm  # deferred: torchvision takes ~2 s to import; CIFAR/KMNIST jobs never need it

    return tvm


def weights_member(name: str, options: dict | None = None):
    """The torchvision weights member model ``name`` loads: its registration's, or for a zoo model the member its
    ``weights`` option names. KeyError for a model without weights, ValueError (naming the members) for a member
    its enum does not have."""
    registered = get_spec(name).pretrained_weights
    if registered is None:
        raise KeyError(f"model {name!r} has no pretrained weights")
    chosen = (options or {}).get(zoo.WEIGHTS_OPTION)
    if chosen is None:
        return _tvm().get_weight(registered)
    return zoo.weights_member(name, chosen)


def weights_name(name: str, options: dict | None = None) -> str:
    """The weights as torchvision names them, e.g. ``DenseNet121_Weights.IMAGENET1K_V1`` (what a run records)."""
    member = weights_member(name, options)
    return f"{type(member).__name__}.{member.name}"


def weights_transforms(name: str, options: dict | None = None) -> tuple[int, list[float], list[float]]:
    """(input side, mean, std) of the weights' own preprocessing: what ``input.size: model`` and
    ``input.normalization: model`` take."""
    transforms = weights_member(name, options).transforms()
    return int(transforms.crop_size[0]), list(transforms.mean), list(transforms.std)


def weights_url(name: str, options: dict | None = None) -> str:
    """Download URL of the ImageNet weights for ``name``."""
    return weights_member(name, options).url


def weights_file(name: str, weights_dir: str | os.PathLike, options: dict | None = None) -> Path:
    """Where the weights live: torchvision's file name (e.g. resnet18-f37072fd.pth) in ``weights_dir``."""
    return Path(weights_dir) / weights_url(name, options).rsplit("/", 1)[-1]


def fetch_weights(name: str, weights_dir: str | os.PathLike, options: dict | None = None) -> Path:
    """Download the weights into ``weights_dir`` unless already there; return the file path.

    The hash prefix in torchvision's file name is checked on download.
    """
    return _fetch(weights_url(name, options), weights_file(name, weights_dir, options), name)


def _fetch(url: str, path: Path, name: str) -> Path:
    if path.is_file():
        try:
            check_hash(path)  # an interrupted or altered earlier download is fetched again
        except WeightsCorrupt as error:
            print(error)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), check_hash=True, progress=True)
        except OSError as error:  # URLError and socket errors: no network here
            raise FileNotFoundError(
                f"Could not download the pretrained weights for {name!r} ({error}). {_how_to_get(url, path)}"
            ) from error
    return path


def _how_to_get(url: str, path: Path) -> str:
    return (
        f"Expected file {path.name} in directory {path.parent.resolve()}. Run snakemake once on a machine "
        f"with internet (its fetch_weights rule downloads it), or download {url} and save it "
        f"as {path.resolve()}; or set `limits: {{pretrained: false}}` to train from scratch."
    )


def load_weights(name: str, weights_dir: str | os.PathLike, options: dict | None = None) -> dict[str, torch.Tensor]:
    """Read the state dict from ``weights_dir`` without touching the network."""
    path = weights_file(name, weights_dir, options)
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained weights for {name!r} not found. "
                                f"{_how_to_get(weights_url(name, options), path)}")
    check_hash(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class WeightsCorrupt(RuntimeError):
    """A weights file whose content does not match the hash in its torchvision file name."""


def check_hash(path: Path) -> None:
    """torchvision names weight files <name>-<first hex digits of their sha256>.pth: check them before use, so
    a truncated or altered download is never trained on. A mismatching file is removed, and refetched by the
    next snakemake run (its fetch_weights rule)."""
    expected = HASH_IN_NAME.search(path.name)
    if expected is None:
        return
    actual = sha256_file(path)
    if not actual.startswith(expected.group(1)):
        path.unlink()
        raise WeightsCorrupt(f"{path}: sha256 {actual[:len(expected.group(1))]}... does not match the "
                             f"{expected.group(1)} in its name (truncated or altered). Removed it: rerun snakemake "
                             "to fetch it again (needs internet), or copy an intact file there.")


def fetch_weights_file(file_name: str, weights_dir: str | os.PathLike) -> Path:
    """Fetch the weights whose torchvision file name is ``file_name`` (what the fetch_weights rule is asked for): a
    registered model's, or any member of a zoo model's weights (the rule's job has not registered the study's zoo
    models)."""
    for name in model_names():
        if get_spec(name).pretrained_weights and weights_file(name, weights_dir).name == file_name:
            return fetch_weights(name, weights_dir)
    for builder in zoo.builder_names():
        for member in _tvm().get_model_weights(builder) or ():
            if member.url.rsplit("/", 1)[-1] == file_name:
                return _fetch(member.url, Path(weights_dir) / file_name, zoo.ZOO_PREFIX + builder)
    raise ValueError(f"no registered model's pretrained weights, nor any torchvision model's, are called {file_name}")
