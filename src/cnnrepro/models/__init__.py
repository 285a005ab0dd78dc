"""Models: takes a model name (and the study's classes, channels, input size, options) and gives the built network,
its head, freeze levels and ImageNet weights. Built-ins register with ``@register_model`` (one file each), the
torchvision zoo by name (``zoo``), a researcher's own networks from their model files (``user_files``).
"""

import importlib
import pkgutil

from .build import apply_freeze, blank_batch, build_model, build_on_meta, count_params, set_bn_mode
from .pretrained import (
    fetch_weights,
    fetch_weights_file,
    load_weights,
    weights_file,
    weights_member,
    weights_name,
    weights_transforms,
    weights_url,
)
from .registry import FeatureSplit, ModelNameTaken, ModelSpec, get_spec, model_names, register_model, unregister_model
from .user_files import ModelFileError, load_model_file, source_of, unload_model_file

__all__ = [
    "FeatureSplit",
    "ModelFileError",
    "ModelNameTaken",
    "ModelSpec",
    "apply_freeze",
    "blank_batch",
    "build_model",
    "build_on_meta",
    "count_params",
    "fetch_weights",
    "fetch_weights_file",
    "get_spec",
    "load_model_file",
    "load_weights",
    "model_names",
    "register_model",
    "set_bn_mode",
    "source_of",
    "unload_model_file",
    "unregister_model",
    "weights_file",
    "weights_member",
    "weights_name",
    "weights_transforms",
    "weights_url",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
