"""Models: takes a model name (and the study's classes, channels, input size, options) and gives the built network,
its head, freeze levels and ImageNet weights. Each architecture file registers its models with ``@register_model``
and this package imports every module in it: a new architecture is one new file here, nothing else.
"""

import importlib
import pkgutil

from .build import apply_freeze, blank_batch, build_model, build_on_meta, count_params, set_bn_mode
from .pretrained import fetch_weights, fetch_weights_file, load_weights, weights_file, weights_url
from .registry import FeatureSplit, ModelSpec, get_spec, model_names, register_model, unregister_model

__all__ = [
    "FeatureSplit",
    "ModelSpec",
    "apply_freeze",
    "blank_batch",
    "build_model",
    "build_on_meta",
    "count_params",
    "fetch_weights",
    "fetch_weights_file",
    "get_spec",
    "load_weights",
    "model_names",
    "register_model",
    "set_bn_mode",
    "unregister_model",
    "weights_file",
    "weights_url",
]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
