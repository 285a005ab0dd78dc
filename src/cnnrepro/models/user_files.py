"""A researcher's own networks: the config's ``model_files`` are Python files whose builders register with the same
``@register_model`` as the built-ins (``from cnnrepro.models import register_model``). Each file is imported once
per process and again when its content changes; its sha256 goes into the settings of every run of its models, so an
edit reruns those runs and nothing else. A file that fails to import, registers nothing or takes a name that is
already registered is refused, naming the file, the line and the error.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..runtime.io import sha256_file
from .registry import ModelNameTaken, model_names, unregister_model
from .zoo import is_zoo_name

MODULE_PREFIX = "cnnrepro_model_file_"


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file (and the line, where there is one)."""


@dataclass(frozen=True)
class ModelFile:
    path: str  # as configured: relative to the working directory, or absolute
    sha256: str
    names: tuple[str, ...]  # the models it registers
    module: str  # the name it was imported under


_LOADED: dict[Path, ModelFile] = {}


def _line(error: BaseException, resolved: Path) -> str:
    """', line N' of the file where ``error`` arose, or ''."""
    if isinstance(error, SyntaxError) and error.lineno and Path(error.filename or "").resolve() == resolved:
        return f", line {error.lineno}"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve() == resolved]
    return f", line {frames[-1].lineno}" if frames else ""


def owner(module: str) -> str:
    """Who registered a model, by the module its builder lives in: a model file's path, or a package module."""
    file = next((f for f in _LOADED.values() if f.module == module), None)
    return f"model file {file.path}" if file else f"the built-in {module}"


def unload_model_file(path: str | Path) -> None:
    """Forget a model file and unregister its models (before it is imported again, or after a test)."""
    loaded = _LOADED.pop(Path(path).resolve(), None)
    if loaded is not None:
        for name in loaded.names:
            unregister_model(name)
        sys.modules.pop(loaded.module, None)


def load_model_file(path: str | Path, sha256: str | None = None) -> ModelFile:
    """Import the model file at ``path`` (relative to the working directory) unless this content already is, and
    return what it registered. With ``sha256``, the file must still be what the workflow checked at start-up."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise ModelFileError(f"{path}: no such file (a relative path is resolved against the working directory, "
                             f"{Path.cwd()})")
    digest = sha256_file(resolved)
    if sha256 is not None and digest != sha256:
        raise ModelFileError(f"{path} changed after the workflow checked it (sha256 {digest[:12]}..., checked "
                             f"{sha256[:12]}...): rerun snakemake, which reruns the runs of its models")
    loaded = _LOADED.get(resolved)
    if loaded is not None and loaded.sha256 == digest:
        return loaded
    unload_model_file(resolved)
    return _import(path, resolved, digest)


def _import(path: str | Path, resolved: Path, digest: str) -> ModelFile:
    before = set(model_names())
    module_name = f"{MODULE_PREFIX}{resolved.stem}_{digest[:12]}"
    _LOADED[resolved] = ModelFile(str(path), digest, (), module_name)  # so owner() names it while it imports
    try:
        spec = importlib.util.spec_from_file_location(module_name, resolved)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except ModelNameTaken as error:
        _undo(resolved, before)
        raise ModelFileError(f"{path}{_line(error, resolved)}: registers model '{error.name}', a name "
                             f"{owner(error.owner)} already registers; give yours another name") from None
    except Exception as error:  # noqa: BLE001 - anything a researcher's file raises stops the run, named
        _undo(resolved, before)
        raise ModelFileError(f"{path}{_line(error, resolved)}: {type(error).__name__}: {error}") from None
    names = tuple(name for name in model_names() if name not in before)
    zoo_like = [name for name in names if is_zoo_name(name)]
    if not names or zoo_like:
        _undo(resolved, before)
        problem = (f"registers {zoo_like[0]!r}, a name of torchvision's zoo" if zoo_like else "registers no model")
        raise ModelFileError(f"{path} {problem}: decorate each builder with @register_model('my_net', head=..., "
                             "input_size=..., channels=...) (from cnnrepro.models import register_model)")
    _LOADED[resolved] = ModelFile(str(path), digest, names, module_name)
    return _LOADED[resolved]


def _undo(resolved: Path, before: set[str]) -> None:
    """A file that failed leaves nothing registered."""
    for name in set(model_names()) - before:
        unregister_model(name)
    loaded = _LOADED.pop(resolved, None)
    if loaded is not None:
        sys.modules.pop(loaded.module, None)


def source_of(name: str) -> ModelFile | None:
    """The model file that registered model ``name``, or None (a built-in or zoo model)."""
    return next((file for file in _LOADED.values() if name in file.names), None)
