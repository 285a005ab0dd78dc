"""Tests for cnnrepro.data: fast, CPU only, never touch the network."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnrepro.data import sources
from cnnrepro.data.catalog import DATASETS, DatasetCorrupt, DatasetUnavailable
from cnnrepro.data.compact import read_compact, write_compact
from cnnrepro.data.prepare import class_distribution, plot_class_distribution, prepare, subsample
from cnnrepro.data.sources import load_npz, load_torchvision, make_synthetic
from cnnrepro.data.splits import stratified_split
from tests.conftest import data_options


def _shared_data() -> Path:
    env = os.environ.get("CNNREPRO_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED = _shared_data()

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_SUBSET_COUNTS = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]


def _need(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data {path} not present (set CNNREPRO_SHARED_DATA to the shared/data folder)")
    return path


# --- dataset table ---------------------------------------------------------------------------------------------------


def test_dataset_table_matches_torchvision():
    import torchvision.datasets as tvd

    assert set(DATASETS) == {"mnist", "kmnist", "cifar10", "cifar100"}
    for name, info in DATASETS.items():
        assert info.name == name
        assert hasattr(tvd, info.torchvision_class)
        assert len(info.classes) == info.num_classes
        assert len(info.mean) == len(info.std) == info.channels
    assert list(DATASETS["mnist"].classes) == tvd.MNIST.classes
    assert list(DATASETS["kmnist"].classes) == tvd.KMNIST.classes
    assert DATASETS["cifar100"].classes == tuple(sorted(DATASETS["cifar100"].classes))
    assert "cifar-10-batches-py/batches.meta" in DATASETS["cifar10"].raw_files
    assert "MNIST/raw/train-images-idx3-ubyte" in DATASETS["mnist"].raw_files
    with pytest.raises(dataclasses_frozen_error()):
        DATASETS["mnist"].size = 32  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


# --- synthetic ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape,k", [("mnist", (1, 28, 28), 10), ("kmnist", (1, 28, 28), 10),
                                           ("cifar10", (3, 32, 32), 10), ("cifar100", (3, 32, 32), 100)])
def test_synthetic_shapes_dtypes_balance(name, shape, k):
    data = make_synthetic(name, 200, 100, seed=3)
    assert set(data) == {"train", "test"}
    for split, n in (("train", 200), ("test", 100)):
        x, y = data[split]
        assert x.shape == (n, *shape) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        counts = torch.bincount(y, minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1
        assert x.float().std() > 10  # not a constant image


def test_synthetic_deterministic():
    a = make_synthetic("cifar10", 50, 20, seed=7)
    b = make_synthetic("cifar10", 50, 20, seed=7)
    c = make_synthetic("cifar10", 50, 20, seed=8)
    for split in ("train", "test"):
        assert torch.equal(a[split][0], b[split][0]) and torch.equal(a[split][1], b[split][1])
    assert not torch.equal(a["train"][0], c["train"][0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_synthetic_learnable_by_linear_model(name):
    data = make_synthetic(name, 400, 200, seed=0)
    torch.manual_seed(0)
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    xtr = xtr.flatten(1).float() / 255.0
    xte = xte.flatten(1).float() / 255.0
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    model = torch.nn.Linear(xtr.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xtr), ytr)
        loss.backward()
        opt.step()
    acc = (model(xte).argmax(1) == yte).float().mean().item()
    assert acc >= 0.3, f"held-out accuracy {acc:.3f} is not >= 3x chance"


# --- subsample / stratified_split ---------------------------------------------------------------------------------------


def _imbalanced_labels():
    return torch.tensor([0] * 500 + [1] * 300 + [2] * 150 + [3] * 50, dtype=torch.int64)


def test_stratified_split_exact_and_deterministic():
    y = _imbalanced_labels()
    tr, va = stratified_split(y, 0.2, seed=1)
    tr2, va2 = stratified_split(y, 0.2, seed=1)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 200 and len(tr) == 800
    assert torch.bincount(y[va]).tolist() == [100, 60, 30, 10]
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(set(tr.tolist()) | set(va.tolist())) == 1000
    tr3, va3 = stratified_split(y, 0.2, seed=2)
    assert not torch.equal(va, va3)
    assert torch.bincount(y[va3]).tolist() == [100, 60, 30, 10]
    # uneven fraction: every class within one of its exact share, total exact
    tr4, va4 = stratified_split(y, 0.137, seed=0)
    assert len(va4) == round(0.137 * 1000)
    share = torch.bincount(y[va4], minlength=4).double()
    assert torch.all((share - torch.bincount(y).double() * 0.137).abs() < 1.0)
    # numpy input and absolute count
    _, va5 = stratified_split(y.numpy(), 100, seed=0)
    assert torch.bincount(y[va5]).tolist() == [50, 30, 15, 5]
    with pytest.raises(ValueError):
        stratified_split(y, 1.5, seed=0)


def test_subsample_stratified_deterministic():
    y = _imbalanced_labels()
    idx_all = torch.arange(1000)
    x = torch.zeros(1000, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = (idx_all // 256).to(torch.uint8)  # each image encodes its own index
    x[:, 0, 0, 1] = (idx_all % 256).to(torch.uint8)
    data = {"train": (x, y), "test": (x[:100].contiguous(), y[:100])}
    a = subsample(data, n_train=100, n_test=None, seed=5)
    b = subsample(data, n_train=100, n_test=None, seed=5)
    assert torch.equal(a["train"][0], b["train"][0]) and torch.equal(a["train"][1], b["train"][1])
    assert torch.bincount(a["train"][1]).tolist() == [50, 30, 15, 5]
    assert a["test"][0] is data["test"][0]  # None keeps all
    # images follow their labels
    orig = a["train"][0][:, 0, 0, 0].long() * 256 + a["train"][0][:, 0, 0, 1].long()
    assert torch.equal(y[orig], a["train"][1])
    assert torch.all(orig[1:] > orig[:-1])  # original order kept
    full = subsample(data, n_train=5000, n_test=None)
    assert len(full["train"][1]) == 1000


# --- compact file --------------------------------------------------------------------------------------------------------


def _meta(name="cifar10"):
    info = DATASETS[name]
    return {"dataset": name, "source": "synthetic", "classes": list(info.classes), "num_classes": info.num_classes}


def test_compact_round_trip(tmp_path):
    data = make_synthetic("cifar10", 60, 30, seed=1)
    path = tmp_path / "sub" / "cifar10.pt"
    side = write_compact(data, path, _meta())
    assert (tmp_path / "sub" / "cifar10.pt.json").is_file()
    on_disk = json.loads((tmp_path / "sub" / "cifar10.pt.json").read_text())
    assert on_disk["sha256"] == side["sha256"]
    assert side["splits"]["train"]["count"] == 60 and side["splits"]["test"]["count"] == 30
    assert side["splits"]["train"]["class_counts"] == torch.bincount(data["train"][1], minlength=10).tolist()
    assert side["splits"]["train"]["x_shape"] == [60, 3, 32, 32]
    assert side["splits"]["train"]["x_dtype"] == "uint8" and side["splits"]["train"]["y_dtype"] == "int64"
    assert side["meta"]["dataset"] == "cifar10" and side["meta"]["classes"][0] == "airplane"
    back = read_compact(path)
    assert back["meta"]["source"] == "synthetic"
    for split in ("train", "test"):
        assert torch.equal(back["splits"][split]["x"], data[split][0])
        assert torch.equal(back["splits"][split]["y"], data[split][1])
    assert not list(tmp_path.glob("sub/.*.tmp"))  # atomic writes left nothing behind


def test_compact_view_does_not_store_parent(tmp_path):
    x = torch.zeros(1000, 1, 28, 28, dtype=torch.uint8)
    y = torch.zeros(1000, dtype=torch.int64)
    write_compact({"train": (x[:10], y[:10]), "test": (x[:10], y[:10])}, tmp_path / "v.pt", _meta("mnist"))
    assert (tmp_path / "v.pt").stat().st_size < 100_000


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_compact_corruption_detected(tmp_path, damage):
    path = tmp_path / "c.pt"
    write_compact(make_synthetic("mnist", 30, 20, seed=0), path, _meta("mnist"))
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetCorrupt) as err:
        read_compact(path)
    assert "c.pt" in str(err.value) and "rerun snakemake" in str(err.value)
    if damage == "truncate":
        with pytest.raises(DatasetCorrupt):
            read_compact(path, verify=False)


def test_compact_missing_sidecar(tmp_path):
    path = tmp_path / "c.pt"
    write_compact(make_synthetic("mnist", 20, 10, seed=0), path, _meta("mnist"))
    (tmp_path / "c.pt.json").unlink()
    with pytest.raises(DatasetCorrupt, match="sidecar"):
        read_compact(path)
    assert read_compact(path, verify=False)["splits"]["train"]["x"].shape == (20, 1, 28, 28)


def test_compact_rejects_bad_dtype_and_length(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"splits": {"train": {"x": torch.zeros(3, 1, 28, 28), "y": torch.zeros(3, dtype=torch.int64)}},
                "meta": {}}, path)
    with pytest.raises(DatasetCorrupt, match="uint8"):
        read_compact(path, verify=False)
    torch.save({"splits": {"train": {"x": torch.zeros(3, 1, 28, 28, dtype=torch.uint8),
                                     "y": torch.zeros(2, dtype=torch.int64)}}, "meta": {}}, path)
    with pytest.raises(DatasetCorrupt, match="labels"):
        read_compact(path, verify=False)


# --- torchvision source (offline) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "kmnist", "cifar10", "cifar100"])
def test_missing_torchvision_files_unavailable(tmp_path, name):
    info = DATASETS[name]
    with pytest.raises(DatasetUnavailable) as err:
        load_torchvision(name, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / info.folder) in msg
    for rel in info.raw_files:
        assert str(tmp_path / rel) in msg
    assert "npz" in msg and "synthetic" in msg and "download" in msg


def test_download_failure_is_unavailable(tmp_path, monkeypatch):
    calls = []

    class Offline:
        def __init__(self, root, train=True, download=False, **kw):
            calls.append((root, train, download))
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(sources, "_torchvision_class", lambda info: Offline)
    with pytest.raises(DatasetUnavailable) as err:
        sources.download("cifar10", tmp_path)
    assert calls and calls[0][2] is True
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "no network" in msg


def test_real_mnist_via_torchvision():
    root = _need("MNIST/raw").parents[1]
    data = load_torchvision("mnist", root)
    xtr, ytr = data["train"]
    xte, yte = data["test"]
    assert xtr.shape == (60000, 1, 28, 28) and xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert xte.shape == (10000, 1, 28, 28)
    assert torch.bincount(ytr).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(yte).tolist() == MNIST_TEST_COUNTS


def test_truncated_mnist_is_corrupt(tmp_path):
    src = _need("MNIST/raw")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith("t10k") or "labels" in f.name:
            shutil.copy(f, raw / f.name)
    # a train image file cut short: 100 images but the header says 60000
    with open(src / "train-images-idx3-ubyte", "rb") as fh:
        (raw / "train-images-idx3-ubyte").write_bytes(fh.read(16 + 100 * 784))
    with pytest.raises(DatasetCorrupt, match="train-images-idx3-ubyte"):
        load_torchvision("mnist", tmp_path)


def test_kmnist_empty_train_placeholder_is_corrupt(tmp_path):
    src = _need("KMNIST")
    shutil.copytree(src, tmp_path / "KMNIST")
    with pytest.raises(DatasetCorrupt, match="train-images-idx3-ubyte"):
        load_torchvision("kmnist", tmp_path)


def test_short_but_valid_split_is_refused(tmp_path):
    src = _need("MNIST/raw")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith("t10k"):
            shutil.copy(f, raw / f.name)
    # well-formed IDX files whose headers say 100 samples
    images = (src / "train-images-idx3-ubyte").read_bytes()
    labels = (src / "train-labels-idx1-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(images[:4] + (100).to_bytes(4, "big") + images[8:16 + 100 * 784])
    (raw / "train-labels-idx1-ubyte").write_bytes(labels[:4] + (100).to_bytes(4, "big") + labels[8:8 + 100])
    with pytest.raises(DatasetCorrupt, match="100 samples, expected 60000"):
        load_torchvision("mnist", tmp_path)


# --- npz source ----------------------------------------------------------------------------------------------------------


def test_load_npz_synthetic_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "a.npz", x=rng.integers(0, 255, (7, 32, 32, 3), dtype=np.uint8),
                        y=np.arange(7, dtype=np.int64))
    np.savez_compressed(tmp_path / "b.npz", x=rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
                        y=np.arange(5, dtype=np.int64))
    data = load_npz({"train": tmp_path / "a.npz", "test": tmp_path / "b.npz"})
    a = np.load(tmp_path / "a.npz")["x"]
    assert data["train"][0].shape == (7, 3, 32, 32)
    assert torch.equal(data["train"][0], torch.from_numpy(a).permute(0, 3, 1, 2))
    assert data["test"][0].shape == (5, 1, 28, 28) and data["test"][1].dtype == torch.int64
    with pytest.raises(DatasetUnavailable, match="nope.npz"):
        load_npz({"train": tmp_path / "nope.npz"})
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetCorrupt, match="broken.npz"):
        load_npz({"train": tmp_path / "broken.npz"})


def test_real_cifar10_npz_subset_and_carved_test(tmp_path):
    npz = _need("cifar10_train.npz")
    data = load_npz({"train": npz})
    x, y = data["train"]
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == CIFAR10_SUBSET_COUNTS
    raw = np.load(npz)["x"]
    assert torch.equal(x[123], torch.from_numpy(raw[123]).permute(2, 0, 1))

    out = tmp_path / "cifar10.pt"
    side = prepare("cifar10", "npz", tmp_path, out, data_options(npz={"train": str(npz)}, split_test_from_train=2000,
                                                                 seed=0))
    assert side["splits"]["test"]["count"] == 2000 and side["splits"]["train"]["count"] == 8000
    assert side["meta"]["split_test_from_train"]["n_test"] == 2000
    test_counts = np.array(side["splits"]["test"]["class_counts"])
    assert np.all(np.abs(test_counts - np.array(CIFAR10_SUBSET_COUNTS) * 0.2) < 1.0)
    assert (np.array(side["splits"]["train"]["class_counts"]) + test_counts).tolist() == CIFAR10_SUBSET_COUNTS
    back = read_compact(out)
    assert back["splits"]["train"]["x"].shape == (8000, 3, 32, 32)


# --- prepare --------------------------------------------------------------------------------------------------------------


def test_prepare_synthetic_and_subsample(tmp_path):
    out = tmp_path / "data" / "mnist.pt"
    opts = data_options(synthetic_train=300, synthetic_test=100, subsample_train=50, subsample_test=None, seed=4)
    side = prepare("mnist", "synthetic", tmp_path / "root", out, opts)
    assert side["splits"]["train"]["count"] == 50 and side["splits"]["test"]["count"] == 100
    assert side["splits"]["train"]["class_counts"] == [5] * 10
    assert side["meta"]["source"] == "synthetic" and side["meta"]["dataset"] == "mnist"
    assert side["meta"]["subsample"]["train"] == 50
    again = prepare("mnist", "synthetic", tmp_path / "root", tmp_path / "again.pt", opts)
    # same content on rebuild (the .pt bytes differ: torch.save names its zip folder after the temp file)
    assert again["splits"] == side["splits"]
    a, b = read_compact(out), read_compact(tmp_path / "again.pt")
    assert all(torch.equal(a["splits"][s][k], b["splits"][s][k]) for s in ("train", "test") for k in ("x", "y"))


def test_prepare_errors(tmp_path):
    with pytest.raises(ValueError, match="torchvision.*npz.*synthetic"):
        prepare("mnist", "http", tmp_path, tmp_path / "x.pt", data_options())
    with pytest.raises(ValueError, match="cifar10"):
        prepare("imagenet", "synthetic", tmp_path, tmp_path / "x.pt", data_options())
    with pytest.raises(DatasetUnavailable):
        prepare("cifar10", "torchvision", tmp_path, tmp_path / "x.pt", data_options())
    assert not (tmp_path / "x.pt").exists()


def test_prepare_real_mnist_subsampled(tmp_path):
    root = _need("MNIST/raw").parents[1]
    side = prepare("mnist", "torchvision", root, tmp_path / "m.pt", data_options(subsample_train=600, subsample_test=100))
    assert side["splits"]["train"]["count"] == 600 and side["meta"]["original_counts"]["train"] == 60000
    assert abs(side["splits"]["train"]["class_counts"][1] - 600 * 6742 / 60000) < 1.0


# --- class distribution -----------------------------------------------------------------------------------------------


def test_class_distribution_table_and_plot(tmp_path):
    data = make_synthetic("kmnist", 100, 40, seed=0)
    df = class_distribution(data, classes=DATASETS["kmnist"].classes)
    assert list(df.columns) == ["split", "class_index", "class_name", "count"]
    assert len(df) == 20 and df.groupby("split")["count"].sum().to_dict() == {"test": 40, "train": 100}
    assert df.loc[df.class_index == 3, "class_name"].iloc[0] == "tsu"

    path = tmp_path / "c.pt"
    side = write_compact(data, path, _meta("kmnist"))
    from_compact = class_distribution(read_compact(path))
    from_side = class_distribution(side)
    assert from_compact.equals(df) and from_side.equals(df)

    png = plot_class_distribution(df, tmp_path / "plots" / "dist.png")
    assert Path(png).is_file() and Path(png).read_bytes()[:4] == b"\x89PNG"
    svg = plot_class_distribution(df, tmp_path / ".dist.svg.ab12cd.tmp")  # temp names from io.atomic_path
    assert b"<svg" in Path(svg).read_bytes()[:500]
