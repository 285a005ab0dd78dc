"""Any dataset, declared under data.datasets.<name>: image folders made here (classes, channels, sizes and split
sizes read from the files; bad folders refused at start-up, naming the file), torchvision's classes by name (their
facts known before download, their files read offline), resized once into a mapped compact file with the train
split's statistics (normalization: auto); batches stream from that file when it does not fit the device's budget,
with the same numbers. Nothing here reaches the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnrepro import config as cfg
from cnnrepro import startup
from cnnrepro.data import compact, declared, prepare, splits
from cnnrepro.data.catalog import DatasetCorrupt
from cnnrepro.engine import train
from tests.test_e2e import REPO

CLASSES = ("apple", "leaf", "sky")


def make_image_folders(root: Path, per_class: dict[str, int], sizes=((24, 24), (20, 28)), grey: bool = False,
                       seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png``: one colour channel lit per class (a class a small network learns in one
    epoch), sizes taken in turn from ``sizes``."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                width, height = sizes[i % len(sizes)]
                pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
                pixels[..., label] += 180
                image = Image.fromarray(pixels)
                (image.convert("L") if grey else image).save(folder / f"{i:04d}.png")
    return root


def study_config(datasets: dict, study: dict | None = None) -> dict:
    """config.yaml with the smoke preset's limits and one study on the declared ``datasets``."""
    config = cfg.deep_merge(cfg.load_yaml(REPO / "config.yaml"), cfg.load_yaml(REPO / "presets" / "smoke.yaml"))
    config["studies"] = {"mine": {"datasets": list(datasets), "models": ["cnn"], "freeze": ["none"],
                                  "input": {"size": 28, "normalization": "auto"},
                                  "recipe": {"optimizer": "adam", "lr": 1.0e-2, "batch_size": 8, "epochs": 2},
                                  **(study or {})}}
    config["data"]["datasets"] = datasets
    return config


@pytest.fixture
def folders(tmp_path):
    return make_image_folders(tmp_path / "images", {"train": 8, "test": 3})


def test_image_folders_give_their_classes_channels_and_sizes_before_any_job(folders):
    declaration = {"source": "imagefolder", "train": str(folders / "train"), "test": str(folders / "test")}
    checked = startup.check(study_config({"fruit": declaration}, {"models": ["torchvision.mobilenet_v3_small"],
                                                                  "input": {"size": 32, "rgb": True,
                                                                            "normalization": "auto"}}))
    settings = checked.settings["mine/fruit/torchvision.mobilenet_v3_small/none/base/seed0"]
    assert settings["classes"] == list(CLASSES) and settings["num_classes"] == 3 and settings["in_channels"] == 3
    facts = cfg.data_settings(checked.config, "fruit")["facts"]
    # Two sizes of images: no native size, so they are stored at the study's 32 px.
    assert facts["split_sizes"] == {"train": 24, "test": 9} and facts["native_size"] is None and facts["size"] == 32
    grey = make_image_folders(folders.parent / "grey", {"train": 2}, sizes=((20, 20),), grey=True)
    facts = declared.folder_facts(str(grey / "train"), None)
    assert facts.channels == 1 and facts.native_size == 20 and facts.split_sizes == {"train": 6}


def test_a_folder_prepares_resized_once_into_a_mapped_file_with_its_train_statistics(folders, tmp_path):
    declaration = {"source": "imagefolder", "train": str(folders / "train"), "split_test_from_train": 0.25,
                   "store_size": 16}
    config = study_config({"fruit": declaration}, {"input": {"size": None, "rgb": False, "normalization": "auto"},
                                                    "models": ["fcnn"]})
    config["studies"]["mine"]["input"]["size"] = 16
    checked = startup.check(config)
    options = cfg.data_settings(checked.config, "fruit")
    out = tmp_path / "fruit.pt"
    sidecar = prepare.prepare_files("fruit", options, "data", out, tmp_path / "c.csv", tmp_path / "c.png")
    assert sidecar["meta"]["mapped"] is True and sidecar["meta"]["size"] == 16
    assert [s["count"] for s in sidecar["splits"].values()] == [18, 6]  # a quarter carved, stratified
    assert sidecar["splits"]["test"]["class_counts"] == [2, 2, 2]
    assert not list(tmp_path.glob(".fruit.pt.*.tmp"))  # the writer's temporary files are gone
    data = compact.read_compact(out)
    x = data["splits"]["train"]["x"]
    assert x.shape == (18, 3, 16, 16) and x.dtype == torch.uint8
    # Each class lit its own channel: the channel means of its images say which class it is.
    lit = x.float().mean(dim=(2, 3)).argmax(1)
    assert torch.equal(lit, data["splits"]["train"]["y"])
    stats = sidecar["meta"]["train_statistics"]
    assert stats["mean"] == pytest.approx((x.double() / 255).mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    transform = splits.batch_transform(checked.settings["mine/fruit/fcnn/none/base/seed0"], torch.device("cpu"),
                                       data=data)
    normalised = transform(x, None, False)
    assert normalised.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # normalization: auto, by the train split's own
    assert "apple" in (tmp_path / "c.csv").read_text()


BAD_FOLDERS = {
    "empty-class": (lambda root: (root / "train" / "empty").mkdir(), ["'data.datasets.fruit.train'",
                                                                      "class folder", "empty holds no image"]),
    "not-an-image": (lambda root: (root / "train" / "leaf" / "notes.txt").write_text("measured on Tuesday"),
                     ["'data.datasets.fruit.train'", "leaf/notes.txt (not an image PIL can read)"]),
    "unreadable": (lambda root: (root / "train" / "sky" / "0099.png").symlink_to(root / "gone.png"),
                   ["'data.datasets.fruit.train'", "sky/0099.png (unreadable"]),
    "different-classes": (lambda root: shutil.rmtree(root / "test" / "sky"),
                          ["'data.datasets.fruit.test'", "different classes", "only in", "sky"]),
    "not-a-folder": (lambda root: shutil.rmtree(root / "test"), ["'data.datasets.fruit.test'", "is not a folder"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_FOLDERS))
def test_a_bad_image_folder_is_refused_at_start_up_naming_the_file(kind, folders):
    damage, words = BAD_FOLDERS[kind]
    damage(folders)
    declaration = {"source": "imagefolder", "train": str(folders / "train"), "test": str(folders / "test")}
    with pytest.raises(cfg.ConfigError) as error:
        startup.check(study_config({"fruit": declaration}))
    missing = [word for word in words if word not in str(error.value)]
    assert not missing, f"{missing} not in: {error.value}"


def test_a_damaged_image_is_named_when_it_is_prepared_and_a_changed_folder_is_read_again(folders, tmp_path):
    damaged = folders / "test" / "leaf" / "0001.png"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a half-copied file: its header still reads at start-up
    declaration = {"source": "imagefolder", "train": str(folders / "train"), "test": str(folders / "test")}
    options = cfg.data_settings(startup.check(study_config({"fruit": declaration})).config, "fruit")
    with pytest.raises(DatasetCorrupt, match=r"leaf/0001.png: cannot be decoded.*replace the file"):
        prepare.prepare("fruit", "imagefolder", "data", tmp_path / "f.pt", options)
    assert not (tmp_path / "f.pt").exists() and not list(tmp_path.glob(".f.pt.*"))
    damaged.unlink()
    shutil.copy(folders / "test" / "leaf" / "0000.png", folders / "test" / "leaf" / "0003.png")
    with pytest.raises(DatasetCorrupt, match="changed after the workflow checked them"):
        prepare.prepare("fruit", "imagefolder", "data", tmp_path / "f.pt", options)
    # What the workflow does next time: its start-up reads the folder again, and the preparation reruns.
    again = cfg.data_settings(startup.check(study_config({"fruit": declaration})).config, "fruit")
    assert again["facts"]["fingerprint"] != options["facts"]["fingerprint"]
    assert prepare.prepare("fruit", "imagefolder", "data", tmp_path / "f.pt", again)["splits"]["test"]["count"] == 9


def test_torchvision_classes_are_known_before_download_with_their_split_arguments():
    config = study_config({"fashion": {"class": "FashionMNIST"}, "letters": {"class": "EMNIST",
                                                                             "args": {"split": "letters"}},
                           "svhn": {"class": "SVHN"}, "stl": {"class": "STL10"}},
                          {"input": {"size": 28, "normalization": "auto", "rgb": True}, "models": ["fcnn"]})
    config["studies"]["mine"]["input"] = {"size": None, "normalization": "unit", "rgb": False}
    config["studies"]["mine"]["datasets"] = ["fashion", "letters"]
    checked = startup.check(config)  # data.source synthetic (the smoke preset): nothing to download
    assert checked.settings["mine/fashion/fcnn/none/base/seed0"]["classes"][:2] == ["T-shirt/top", "Trouser"]
    letters = checked.settings["mine/letters/fcnn/none/base/seed0"]
    assert letters["num_classes"] == 26 and letters["classes"][:2] == ["a", "b"]  # not torchvision's unused 'N/A'
    assert declared.label_offset({"class": "EMNIST", "args": {"split": "letters"}}) == 1
    assert declared.label_offset({"class": "EMNIST", "args": {"split": "balanced"}}) == 0
    svhn = cfg.dataset_info(checked.config, "svhn")
    assert (svhn.channels, svhn.size, svhn.split_sizes) == (3, 32, {"train": 73257, "test": 26032})
    assert cfg.dataset_info(checked.config, "stl").size == 96
    assert declared.split_arguments({"class": "SVHN", "splits": {"train": {"split": "extra"}}}) == \
        {"train": {"split": "extra"}, "test": {"split": "test"}}
    assert declared.split_arguments({"class": "EMNIST", "args": {"split": "digits"}})["test"] == \
        {"split": "digits", "train": False}


@pytest.mark.parametrize("declaration, words", [
    ({"class": "EMNIST"}, ["'data.datasets.ds.args.split'", "byclass, bymerge, balanced"]),
    ({"class": "FashionMNSIT"}, ["'data.datasets.ds.class'", "not a dataset class of torchvision.datasets"]),
    ({"class": "Flowers102", "source": "torchvision"}, ["'data.datasets.ds.class'", "cnnrepro download"]),
    ({"class": "SVHN", "splits": {"train": {"split": "valid"}}}, ["'data.datasets.ds.splits.train'",
                                                                  "train, test, extra"]),
    ({"source": "synthetic"}, ["'data.datasets.ds'", "not a built-in dataset", "valid values: mnist, kmnist",
                               "declares none of its own"]),
    ({"source": "imagefolder", "class": "SVHN"}, ["'data.datasets.ds.train'", "source imagefolder"]),
    ({"class": "SVHN", "split_test_from_train": 0.2}, ["'data.datasets.ds.split_test_from_train'",
                                                       "has its own test split"]),
])
def test_a_bad_declaration_is_refused_naming_its_key(declaration, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = study_config({"ds": declaration})
    config["data_root"] = str(tmp_path / "nothing_here")
    with pytest.raises(cfg.ConfigError) as error:
        startup.check(config)
    missing = [word for word in words if word not in str(error.value)]
    assert not missing, f"{missing} not in: {error.value}"


def test_a_declared_torchvision_dataset_is_read_offline_from_its_files(tmp_path, monkeypatch):
    """FashionMNIST's files have MNIST's format: the real MNIST files in ../shared/data stand in for them."""
    shared = REPO.parent / "shared" / "data" / "MNIST" / "raw"
    if not (shared / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"the real MNIST files are not in {shared}")
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        shutil.copy(shared / name, raw / name)
    config = study_config({"fashion": {"class": "FashionMNIST", "source": "torchvision", "split_test_from_train":
                                       None, "subsample_train": 300, "subsample_test": 100}},
                          {"input": {"size": None, "normalization": "auto"}})
    config["data_root"] = str(tmp_path / "root")
    options = cfg.data_settings(startup.check(config).config, "fashion")
    sidecar = prepare.prepare("fashion", "torchvision", config["data_root"], tmp_path / "f.pt", options)
    assert sidecar["meta"]["original_counts"] == {"train": 60000, "test": 10000}
    assert [s["count"] for s in sidecar["splits"].values()] == [300, 100] and sidecar["meta"]["size"] == 28
    x = compact.read_compact(tmp_path / "f.pt")["splits"]["train"]["x"]
    assert x.shape == (300, 1, 28, 28) and 0.05 < float(x.float().mean()) / 255 < 0.3  # MNIST's ink

    # A class cnnrepro does not describe has its facts read from its files (here: FashionMNIST, as if unknown).
    monkeypatch.delitem(declared.KNOWN, "FashionMNIST")
    declared._torchvision_facts.cache_clear()
    facts = declared.facts_of({"class": "FashionMNIST"}, config["data_root"])
    assert facts.origin == "torchvision FashionMNIST (read from its files)"
    assert (facts.channels, facts.native_size, dict(facts.split_sizes)) == (1, 28, {"train": 60000, "test": 10000})
    assert facts.classes[0] == "T-shirt/top"
    declared._torchvision_facts.cache_clear()


class _FakeLetters:
    """EMNIST letters as torchvision's class holds them: labels 1 to 26 (0 is 'N/A', which no image has)."""

    def __init__(self, root, download, **kwargs):
        self.targets = torch.arange(1, 27).repeat(2)
        self.data = torch.zeros(len(self.targets), 28, 28, dtype=torch.uint8)


def test_emnist_letters_are_labelled_0_to_25_as_their_26_classes(monkeypatch, tmp_path):
    monkeypatch.setattr(prepare, "open_declared", lambda settings, root: {"train": _FakeLetters(root, False),
                                                                          "test": _FakeLetters(root, False)})
    declaration = {"source": "torchvision", "class": "EMNIST", "args": {"split": "letters"}}
    facts = {"channels": 1, "size": 28, "split_sizes": {"train": 52, "test": 52}, "origin": "torchvision EMNIST"}
    labels = prepare._torchvision_splits(declaration, tmp_path, facts)["train"].labels
    assert labels.min() == 0 and labels.max() == 25 and len(set(labels.tolist())) == 26


def test_a_split_held_on_a_device_is_gathered_a_chunk_at_a_time(monkeypatch):
    x = torch.arange(40 * 3 * 4 * 4, dtype=torch.int32).reshape(40, 3, 4, 4).to(torch.uint8)
    index = torch.tensor([5, 0, 39, 7, 7, 12, 30, 1, 2])
    monkeypatch.setattr(splits, "GATHER_CHUNK_BYTES", 2 * 3 * 4 * 4)  # two images per chunk: five chunks
    assert torch.equal(splits._gathered(x, index, torch.device("cpu")), x[index])
    assert torch.equal(splits._gathered(x, None, torch.device("cpu")), x)


def test_the_stored_size_covers_the_input_sizes_an_assumption_tries(folders):
    assumption = {"key": "input.size", "basis": "choice", "reason": "the paper gives no size", "alternatives": [40]}
    config = study_config({"fruit": {"source": "imagefolder", "train": str(folders / "train"),
                                     "test": str(folders / "test")}}, {"assumptions": [assumption]})
    config["limits"]["input_size"] = None
    checked = startup.check(config)  # not swept: the stored size is the same with and without the sweep
    assert cfg.dataset_info(checked.config, "fruit").size == 40
    assert checked.settings["mine/fruit/cnn/none/base/seed0"]["input"]["size"] == 28


def _train(settings: dict, data: Path, folder: Path) -> dict:
    outputs = train.RunOutputs(folder / "w.pt", folder / "h.csv", folder / "m.json", folder / "c.pt")
    folder.mkdir()
    return train.train_run(settings, data, outputs, threads=1)


def test_streamed_batches_give_the_numbers_of_splits_held_on_the_device(folders, tmp_path, monkeypatch, caplog,
                                                                        torch_globals_restored):
    declaration = {"source": "imagefolder", "train": str(folders / "train"), "test": str(folders / "test")}
    checked = startup.check(study_config({"fruit": declaration}, {"eval_split": "val", "val_fraction": 0.25}))
    settings = checked.settings["mine/fruit/cnn/none/base/seed0"]
    data = tmp_path / "fruit.pt"
    prepare.prepare("fruit", "imagefolder", "data", data, cfg.data_settings(checked.config, "fruit"))
    caplog.set_level("INFO", logger="cnnrepro")
    held = _train(settings, data, tmp_path / "held")
    assert "the splits are held on cpu" in caplog.text
    caplog.clear()
    monkeypatch.setattr(splits, "memory_budget", lambda device: 0)  # nothing fits: stream
    streamed = _train(settings, data, tmp_path / "streamed")
    assert "batches stream from the memory-mapped file to cpu" in caplog.text
    for key in ("test", "eval", "train_loss_first", "train_loss_last", "train_acc_last", "params_total"):
        assert held[key] == streamed[key], key
    assert (tmp_path / "held" / "h.csv").read_text().split("epoch_seconds")[0] == \
        (tmp_path / "streamed" / "h.csv").read_text().split("epoch_seconds")[0]
    history = [line.split(",")[:6] for line in (tmp_path / "held" / "h.csv").read_text().splitlines()]
    assert history == [line.split(",")[:6] for line in (tmp_path / "streamed" / "h.csv").read_text().splitlines()]
    assert held["test"]["top1"] > 0.6  # three colours, learned in two epochs (chance: 1/3)


MEMORY_CAP_JOB = r"""
import json, resource, sys
import PIL.PngImagePlugin
import torch
import torchvision.transforms.v2.functional
from cnnrepro import config as cfg, startup
from cnnrepro.data import prepare
from cnnrepro.engine import train
from cnnrepro.plan import memory
from cnnrepro.runtime.logs import job_log

job, config_file, headroom, data, folder = sys.argv[1:]
checked = startup.check(json.load(open(config_file)))
options = cfg.data_settings(checked.config, "big")
settings = checked.settings["mine/big/cnn/none/base/seed0"]

def request(options):
    return memory.prepare_mem_mb("big", options) if job == "prepare" else memory.train_mem_mb(settings, options)

# The job's mem_mb, and what it would be for a dataset a hundred times larger.
larger = {**options, "facts": {**options["facts"], "split_sizes": {split: 100 * count for split, count
                                                                   in options["facts"]["split_sizes"].items()}}}
requests = [request(options), request(larger)]

def vm_data():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData:"))

# Everything is imported; from here on the job's private memory (heap, anonymous maps: what RLIMIT_DATA counts, and
# what a cgroup cannot reclaim) may grow by the headroom only, a fraction of the dataset.
limit = vm_data() + int(headroom)
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
with job_log(None):  # the job's log, on stderr
    if job == "prepare":
        result = {"bytes": prepare.prepare("big", "imagefolder", "data", data, options)["bytes"]}
    else:
        outputs = train.RunOutputs(*(f"{folder}/{name}" for name in ("w.pt", "h.csv", "m.json", "c.pt")))
        record = train.train_run(settings, data, outputs, threads=1)
        result = {"status": record["status"], "top1": record["test"]["top1"]}
print(json.dumps({**result, "request_mb": requests, "limit": limit, "vm_data": vm_data()}))
"""


@pytest.mark.slow
def test_a_dataset_larger_than_the_memory_cap_prepares_and_trains_within_it(tmp_path):
    """The stored dataset (about 0.6 GB: small PNGs stored at 224 px) is four times the room each job's private memory
    is given (RLIMIT_DATA: its use once imported + 150 MB): the prepare job writes it image by image into the mapped
    file, the training job streams its batches from there. Each job's mem_mb request (cnnrepro.plan.memory) is the
    same for a dataset a hundred times larger."""
    folders = make_image_folders(tmp_path / "big_images", {"train": 1100, "test": 300}, sizes=((32, 32),))
    config = study_config({"big": {"source": "imagefolder", "train": str(folders / "train"),
                                   "test": str(folders / "test"), "store_size": 224}},
                          {"input": {"size": 28, "normalization": "auto"},
                           "recipe": {"optimizer": "adam", "lr": 1.0e-2, "batch_size": 32, "eval_batch_size": 32,
                                      "epochs": 1}})
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "run").mkdir()
    headroom = 150 * 2**20
    results = {}
    for job in ("prepare", "train"):
        done = subprocess.run([sys.executable, "-c", MEMORY_CAP_JOB, job, str(tmp_path / "config.json"),
                               str(headroom), str(tmp_path / "big.pt"), str(tmp_path / "run")], cwd=REPO,
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert done.returncode == 0, done.stderr[-4000:]
        results[job] = json.loads(done.stdout.strip().splitlines()[-1])
        assert results[job]["vm_data"] <= results[job]["limit"]
        small, large = results[job]["request_mb"]
        assert small == large  # mem_mb does not grow with the dataset: it is not held in the job's memory
    assert results["prepare"]["bytes"] > 4 * headroom  # the dataset is far larger than the room each job had
    assert results["train"]["status"] == "ok" and results["train"]["top1"] > 0.5  # it learned (chance: 1/3)
    assert "batches stream from the memory-mapped file" in done.stderr


def test_preparing_a_torchvision_class_asks_for_its_arrays_at_their_own_size_not_the_stored_one():
    from cnnrepro.plan import memory

    config = study_config({"byclass": {"source": "torchvision", "class": "EMNIST", "args": {"split": "byclass"}}},
                          {"input": {"size": 224, "normalization": "auto"}})
    config["limits"]["input_size"] = None
    checked = startup.check(config)
    settings = cfg.data_settings(checked.config, "byclass")
    stored = memory.dataset_bytes("byclass", settings) / 2**20  # 814,255 images at 224 px: about 38 GiB
    native = (697932 + 116323) * 28 * 28 / 2**20  # torchvision's arrays: 28 px
    asked = memory.prepare_mem_mb("byclass", settings)
    assert settings["facts"]["size"] == 224 and asked < stored / 10 and asked > native
