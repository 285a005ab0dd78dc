"""The datasets the built-in studies name: what each holds (channels, size, classes, statistics, split sizes) and
which torchvision files it is read from; and the two ways a dataset's files can be wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

SPLITS = ("train", "test")


class DatasetUnavailable(RuntimeError):
    """The files a source needs are not on disk (and could not be fetched)."""


class DatasetCorrupt(RuntimeError):
    """A file exists but is empty, truncated, fails its checksum or holds fewer samples than it should."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    torchvision_class: str
    channels: int
    size: int
    num_classes: int
    classes: tuple[str, ...]
    raw_files: tuple[str, ...]  # relative to the torchvision root folder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_sizes: Mapping[str, int] = field(default_factory=dict)  # full torchvision split sizes

    @property
    def folder(self) -> str:
        """The folder under ``root`` that torchvision reads (``MNIST/raw``, ``cifar-10-batches-py``, ...)."""
        return str(Path(self.raw_files[0]).parent)


_MNIST_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# torchvision.datasets.MNIST.classes / KMNIST.classes (checked against torchvision in the tests).
_MNIST_CLASSES = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)


_KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


# batches.meta label_names
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


# meta fine_label_names (alphabetical, as stored in cifar-100-python/meta)
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_class="MNIST",
        channels=1,
        size=28,
        num_classes=10,
        classes=_MNIST_CLASSES,
        raw_files=tuple(f"MNIST/raw/{f}" for f in _MNIST_RAW),
        # seed 000 (its --norm mnist)
        mean=(0.1307,),
        std=(0.3081,),
        split_sizes={"train": 60000, "test": 10000},
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        torchvision_class="KMNIST",
        channels=1,
        size=28,
        num_classes=10,
        classes=_KMNIST_CLASSES,
        raw_files=tuple(f"KMNIST/raw/{f}" for f in _MNIST_RAW),
        # Seed 003 uses x/255 without mean/std normalisation; these are the commonly quoted KMNIST train
        # statistics, for recipes that do normalise.
        mean=(0.1918,),
        std=(0.3483,),
        split_sizes={"train": 60000, "test": 10000},
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        torchvision_class="CIFAR10",
        channels=3,
        size=32,
        num_classes=10,
        classes=_CIFAR10_CLASSES,
        raw_files=tuple(
            f"cifar-10-batches-py/{f}"
            for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        ),
        # the true dataset std (seed 001); seed 002's code uses std (0.2023, 0.1994, 0.2010), see config.yaml.
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        split_sizes={"train": 50000, "test": 10000},
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        torchvision_class="CIFAR100",
        channels=3,
        size=32,
        num_classes=100,
        classes=_CIFAR100_CLASSES,
        raw_files=("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        # the CIFAR-100 statistics (seed 002 reuses the CIFAR-10 constants instead).
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        split_sizes={"train": 50000, "test": 10000},
    ),
}


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}") from None
