"""Datasets a config declares under ``data.datasets.<name>`` (a name that is not built in): any torchvision
classification dataset by its class (``{source: torchvision, class: FashionMNIST}``, with its split arguments), or a
researcher's images in folders (``{source: imagefolder, train: DIR, test: DIR}``, one sub-folder per class, or one
folder and ``split_test_from_train``). What the rest of the pipeline needs to know before any job (class names,
channels, image size, split sizes) is read here: from the image folders themselves (every file's header, so a file
that is not an image is named before anything runs), from torchvision's class for the datasets it describes
(``KNOWN``), or from the files already downloaded for any other torchvision class. Preparing the pixels is
cnnrepro.data.prepare's job; reading them, cnnrepro.data.sources'.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError

from cnnrepro.data.catalog import DATASETS

SPLIT_NAMES = ("train", "test")
# PIL modes without colour: such images are prepared as one channel, the others as RGB.
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class DeclarationError(ValueError):
    """A declared dataset that cannot be used: ``key`` is the declaration's key at fault (``test``, ``args.split``),
    the message says what is wrong and the fix."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Facts:
    """What a declared dataset holds, read before any job."""

    classes: tuple[str, ...]
    channels: int
    native_size: int | None  # the side when every image is square and of one size; None otherwise
    split_sizes: Mapping[str, int]  # images per split the source has ("test" absent: carve one)
    origin: str  # where the facts come from, for messages and the record
    fingerprint: str | None = None  # image folders: every file's path, size and time (a change reruns preparation)
    files: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict, compare=False, repr=False)

    def record(self) -> dict:
        """The facts as plain data (what the workflow's jobs get in their settings)."""
        return {"classes": list(self.classes), "channels": self.channels, "native_size": self.native_size,
                "split_sizes": dict(self.split_sizes), "origin": self.origin, "fingerprint": self.fingerprint}


# ---------------------------------------------------------------------------------------------------------------------
# torchvision's datasets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownClass:
    """A torchvision dataset whose facts are known before its files are downloaded."""

    channels: int
    size: int
    sizes: Mapping[str, Mapping[str, int]]  # variant (EMNIST's split argument, else "") -> split name -> images
    split_keyword: str = "train"  # how the class picks a split: train=True/False, or split="train"/"test"
    variant_argument: str | None = None  # the argument that picks a variant (EMNIST's split)
    classes: tuple[str, ...] = ()  # when the class has no ``classes`` attribute


_DIGITS = tuple("0123456789")
_MNIST_SIZES = {"": {"train": 60000, "test": 10000}}
# The torchvision datasets cnnrepro knows beyond its built-in ones (cnnrepro.data.catalog, whose classes count as
# known too), with their split sizes as torchvision's files hold them (the prepare job checks them).
KNOWN: dict[str, KnownClass] = {
    "FashionMNIST": KnownClass(1, 28, _MNIST_SIZES),
    "QMNIST": KnownClass(1, 28, {"": {"train": 60000, "test": 60000}}),
    "EMNIST": KnownClass(1, 28, {"byclass": {"train": 697932, "test": 116323},
                                 "bymerge": {"train": 697932, "test": 116323},
                                 "balanced": {"train": 112800, "test": 18800},
                                 "letters": {"train": 124800, "test": 20800},
                                 "digits": {"train": 240000, "test": 40000},
                                 "mnist": {"train": 60000, "test": 10000}}, variant_argument="split"),
    "USPS": KnownClass(1, 16, {"": {"train": 7291, "test": 2007}}, classes=_DIGITS),
    "SVHN": KnownClass(3, 32, {"": {"train": 73257, "test": 26032, "extra": 531131}}, "split", classes=_DIGITS),
    "STL10": KnownClass(3, 96, {"": {"train": 5000, "test": 8000}}, "split",
                        classes=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")),
}


def known_class(name: str) -> KnownClass | None:
    """What cnnrepro knows of torchvision dataset class ``name`` before download: a built-in dataset's entry in the
    catalog, or ``KNOWN``."""
    if name in KNOWN:
        return KNOWN[name]
    info = next((info for info in DATASETS.values() if info.torchvision_class == name), None)
    if info is None:
        return None
    return KnownClass(info.channels, info.size, {"": dict(info.split_sizes)}, classes=info.classes)


def torchvision_class(name: str):
    import torchvision.datasets  # deferred: torchvision takes ~2 s to import; only torchvision datasets need it

    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type):
        raise DeclarationError("class", f"'{name}' is not a dataset class of torchvision.datasets (e.g. "
                               "FashionMNIST, EMNIST, SVHN, STL10; the spelling is the class's)")
    return cls


def split_keyword(name: str) -> str | None:
    """How torchvision class ``name`` picks a split: train=True/False ("train"), split="train"/"test" ("split"), or
    not at all (None: one set)."""
    known = known_class(name)
    if known is not None:
        return known.split_keyword
    parameters = inspect.signature(torchvision_class(name).__init__).parameters
    return next((keyword for keyword in ("train", "split") if keyword in parameters), None)


def split_arguments(declaration: Mapping[str, Any]) -> dict[str, dict]:
    """Keyword arguments of the torchvision class per split: its ``args``, then how the class picks the split, then
    the declaration's own ``splits``. A class that picks no split has one set, the train split (a test split is
    carved from it with split_test_from_train), unless ``splits.test`` gives one."""
    args, given = dict(declaration.get("args") or {}), declaration.get("splits") or {}
    keyword = split_keyword(declaration["class"])
    out = {}
    for split in SPLIT_NAMES:
        if keyword is None and split == "test" and "test" not in given:
            continue
        picked = {} if keyword is None else {keyword: split == "train"} if keyword == "train" else {keyword: split}
        out[split] = {**args, **picked, **given.get(split, {})}
    return out


def _known_facts(name: str, declaration: Mapping[str, Any]) -> Facts:
    known = known_class(name)
    args = declaration.get("args") or {}
    variant = args.get(known.variant_argument, "") if known.variant_argument else ""
    if variant not in known.sizes:
        choices = ", ".join(v for v in known.sizes if v)
        raise DeclarationError(f"args.{known.variant_argument}", f"{name} needs {known.variant_argument} set to one of "
                               f"{choices}; got {variant or 'none'}")
    sizes = known.sizes[variant]
    split_sizes = {}
    for split, kwargs in split_arguments(declaration).items():
        picked = kwargs.get(known.split_keyword)
        label = ("train" if picked else "test") if known.split_keyword == "train" else picked
        if label not in sizes:
            raise DeclarationError(f"splits.{split}", f"{name} has no split {label!r}; its splits: {', '.join(sizes)}")
        split_sizes[split] = sizes[label]
    cls = torchvision_class(name)
    classes = known.classes
    if not classes:
        by_split = getattr(cls, "classes_split_dict", None)
        classes = tuple(by_split[variant]) if by_split else tuple(cls.classes)
        classes = classes[label_offset(declaration):]
    return Facts(tuple(map(str, classes)), known.channels, known.size, split_sizes, f"torchvision {name}")


# A class list whose first name stands for a label no image has (EMNIST letters: 'N/A', then a to z as 1 to 26).
UNUSED_LABEL = "N/A"


def label_offset(declaration: Mapping[str, Any]) -> int:
    """1 where a torchvision dataset's labels start at 1 behind an unused class 0 (EMNIST letters): the study then
    sees 26 classes labelled 0 to 25 instead of a 27th no image has; else 0."""
    cls = torchvision_class(declaration["class"])
    by_split = getattr(cls, "classes_split_dict", None)
    known = known_class(declaration["class"])
    if not by_split or known is None or not known.variant_argument:
        return 0
    variant = (declaration.get("args") or {}).get(known.variant_argument)
    return 1 if by_split.get(variant, ("",))[0] == UNUSED_LABEL else 0


def torchvision_labels(dataset: Any):
    """A torchvision dataset's labels without decoding its images (None when it keeps them nowhere to read)."""
    import numpy as np  # deferred: numpy comes with torch; only a dataset read from its files needs it here

    for attribute in ("targets", "labels", "_labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            array = np.asarray(labels)
            return (array[:, 0] if array.ndim == 2 else array).astype(np.int64)
    samples = getattr(dataset, "_samples", None) or getattr(dataset, "samples", None)
    if samples is not None:
        return np.asarray([label for _, label in samples], dtype=np.int64)
    return None


def _facts_from_files(name: str, declaration: Mapping[str, Any], root: str) -> Facts:
    """Facts of a torchvision class cnnrepro does not describe, read from its downloaded files."""
    cls = torchvision_class(name)
    datasets, split_sizes, labels = {}, {}, []
    for split, kwargs in split_arguments(declaration).items():
        try:
            datasets[split] = cls(root=root, download=False, **kwargs)
        except Exception as error:  # noqa: BLE001 - RuntimeError "not found", FileNotFoundError, ...
            raise DeclarationError(
                "class", f"cnnrepro reads the classes and image size of torchvision {name} from its files, which are "
                f"not under data_root ({root}: {type(error).__name__}: {error}). Download them once, on a machine "
                f"with internet: cnnrepro download <dataset name> (with the same --configfile)") from None
        found = torchvision_labels(datasets[split])
        if found is None:
            raise DeclarationError("class", f"torchvision {name} keeps its labels nowhere cnnrepro can read them "
                                   "without decoding every image; put its images in folders (source: imagefolder)")
        labels.append(found)
        split_sizes[split] = len(found)
    first = datasets["train"]
    count = int(max(int(lab.max()) for lab in labels if len(lab)) + 1)
    classes = getattr(first, "classes", None)
    classes = tuple(map(str, classes)) if classes is not None and len(classes) == count else \
        tuple(str(k) for k in range(count))
    image = first[0][0]
    channels = 1 if getattr(image, "mode", "RGB") in GREY_MODES else 3
    width, height = image.size
    data = getattr(first, "data", None)
    uniform = data is not None and getattr(data, "ndim", 0) in (3, 4)
    return Facts(classes, channels, width if uniform and width == height else None, split_sizes,
                 f"torchvision {name} (read from its files)")


# ---------------------------------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------------------------------


def _class_folders(folder: Path, key: str) -> list[Path]:
    if not folder.is_dir():
        raise DeclarationError(key, f"{folder} is not a folder (relative paths are resolved against the working "
                               f"directory, {Path.cwd()}); expected one sub-folder of images per class")
    classes = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DeclarationError(key, f"{folder} has no sub-folders; expected one sub-folder of images per class "
                               "(its name is the class name)")
    return classes


@functools.lru_cache(maxsize=65536)
def _header(path: str, size: int, mtime_ns: int) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from an image file's header (no pixels decoded); keyed by size and time, so a
    changed file is read again."""
    with Image.open(path) as image:
        return image.mode, image.size


def _scan_folder(folder: Path, key: str) -> tuple[list[str], list, list]:
    """(class names, [(relative path, label)], [(mode, size)]) of one image folder; every file must be an image."""
    found = _class_folders(folder, key)
    names = [entry.name for entry in found]
    files, headers, problems = [], [], []
    for label, class_folder in enumerate(found):
        # Files and links (a dangling link is a file that cannot be read); names starting with '.' are skipped.
        entries = sorted(entry for entry in class_folder.rglob("*") if (entry.is_file() or entry.is_symlink())
                         and not any(part.startswith(".") for part in entry.relative_to(class_folder).parts))
        if not entries:
            raise DeclarationError(key, f"class folder {class_folder} holds no image; every class needs images "
                                   "(remove the empty folder, or add its images)")
        for entry in entries:
            try:
                stat = entry.stat()
                headers.append(_header(str(entry), stat.st_size, stat.st_mtime_ns))
            except UnidentifiedImageError:
                problems.append(f"{entry} (not an image PIL can read)")
            except OSError as error:
                problems.append(f"{entry} (unreadable: {error.strerror or error})")
            else:
                files.append((str(entry.relative_to(folder)), label, stat.st_size, stat.st_mtime_ns))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DeclarationError(key, f"{len(problems)} file(s) under {folder} are not images: {shown}. Move them "
                               "out of the class folders (files whose name starts with '.' are skipped)")
    return names, files, headers


@functools.lru_cache(maxsize=32)
def _folder_facts(train: str, test: str | None, signature: tuple) -> Facts:
    scanned = {"train": _scan_folder(Path(train), "train")}
    if test is not None:
        scanned["test"] = _scan_folder(Path(test), "test")
        train_names, test_names = scanned["train"][0], scanned["test"][0]
        if train_names != test_names:
            only_train = sorted(set(train_names) - set(test_names))
            only_test = sorted(set(test_names) - set(train_names))
            raise DeclarationError("test", f"the train and test folders have different classes: only in {train}: "
                                   f"{', '.join(only_train) or 'none'}; only in {test}: "
                                   f"{', '.join(only_test) or 'none'}. Give both the same class folders")
    headers = [header for _, _, split_headers in scanned.values() for header in split_headers]
    channels = 1 if all(mode in GREY_MODES for mode, _ in headers) else 3
    sizes = {size for _, size in headers}
    (width, height) = next(iter(sizes))
    native = width if len(sizes) == 1 and width == height else None
    digest = hashlib.sha256()
    for split, (_, files, _) in scanned.items():
        for relative, label, size, mtime in files:
            digest.update(f"{split}\0{relative}\0{label}\0{size}\0{mtime}\n".encode())
    listing = {split: tuple((relative, label) for relative, label, _, _ in files)
               for split, (_, files, _) in scanned.items()}
    return Facts(tuple(scanned["train"][0]), channels, native, {split: len(f) for split, f in listing.items()},
                 f"image folders {train}" + (f", {test}" if test else ""), digest.hexdigest(), listing)


def _signature(*folders: str | None) -> tuple:
    """What tells a folder changed without reading its files: every directory's time (adding, removing or renaming a
    file changes its folder's)."""
    out = []
    for folder in folders:
        if folder and Path(folder).is_dir():
            for path, _, _ in os.walk(folder):
                out.append((path, os.stat(path).st_mtime_ns))
    return tuple(out)


def folder_facts(train: str, test: str | None) -> Facts:
    """The facts of image folders (cached in this process until a folder changes)."""
    return _folder_facts(str(train), None if test is None else str(test), _signature(train, test))


# ---------------------------------------------------------------------------------------------------------------------
# a declaration
# ---------------------------------------------------------------------------------------------------------------------


def facts_of(declaration: Mapping[str, Any], data_root: str) -> Facts:
    """The facts of a declared dataset: from its ``class`` (torchvision) or its ``train`` folder."""
    if "class" in declaration:
        return _torchvision_facts(json.dumps(dict(declaration), sort_keys=True), str(data_root))
    if "train" in declaration:
        return folder_facts(declaration["train"], declaration.get("test"))
    raise DeclarationError("class", "declares no data of its own: give class (a torchvision dataset, e.g. class: "
                           "FashionMNIST) or train (an image folder with one sub-folder per class, and test or "
                           "split_test_from_train)")


@functools.lru_cache(maxsize=64)
def _torchvision_facts(declaration_json: str, data_root: str) -> Facts:
    declaration = json.loads(declaration_json)
    name = declaration["class"]
    if known_class(name) is not None:
        return _known_facts(name, declaration)
    return _facts_from_files(name, declaration, data_root)
