"""Corrupt and changed inputs, and batches too large for memory: detected before training, removed or rebuilt
where possible, otherwise reported with the fix (issue "Fault tolerance proved by a suite", items 3 and 4)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cnnrepro import config as cfg
from cnnrepro import models
from cnnrepro.data import catalog, compact, sources
from cnnrepro.engine import train
from cnnrepro.models import pretrained
from tests.test_e2e import copy_workflow, snakemake


def one_run(tmp_path, study: dict):
    config = cfg.validate({"studies": {"fault": study}, "device": "cpu"})
    (settings,) = cfg.settings_by_run(config).values()
    outputs = train.RunOutputs(tmp_path / "w.pt", tmp_path / "h.csv", tmp_path / "m.json", tmp_path / "c.pt")
    return settings, outputs


pytestmark = pytest.mark.usefixtures("torch_globals_restored")


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_corrupt_compact_dataset_is_never_trained_on_and_is_removed_for_rebuilding(damage, tmp_path, monkeypatch):
    data = tmp_path / "mnist.pt"
    compact.write_compact(sources.make_synthetic("mnist", 64, 32), data, {"dataset": "mnist"})
    raw = bytearray(data.read_bytes())
    if damage == "truncate":
        del raw[len(raw) // 2:]
    else:
        raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    trained = []
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: trained.append(1))
    settings, outputs = one_run(tmp_path, {"datasets": ["mnist"], "models": ["fcnn"],
                                           "recipe": {"lr": 0.1, "batch_size": 16, "epochs": 1}})
    with pytest.raises(catalog.DatasetCorrupt, match=r"sha256 .* does not match .*Removed .*mnist.pt.*rerun snakemake"):
        train.train_run(settings, data, outputs, threads=1)
    assert trained == [] and not data.exists() and not (tmp_path / "mnist.pt.json").exists()
    assert not outputs.metrics.exists()


def test_a_corrupt_weights_file_is_detected_before_use_and_removed(tmp_path, monkeypatch):
    good = models.build_model("resnet18", 1000)  # a 1000-class model: the ImageNet layout the file holds
    path = pretrained.weights_file("resnet18", tmp_path)
    torch.save(good.state_dict(), path)  # random weights: their sha256 cannot match the name's hash prefix
    with pytest.raises(pretrained.WeightsCorrupt, match=r"resnet18-f37072fd.pth: sha256 .* does not match the "
                                                        r"f37072fd in its name.*Removed it: rerun snakemake"):
        models.build_model("resnet18", 10, pretrained=True, weights_dir=tmp_path)
    assert not path.exists()
    # fetch_weights (the workflow's fetch rule) would fetch it again; here the network is refused.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    torch.save(good.state_dict(), path)
    with pytest.raises(FileNotFoundError, match="Could not download"):
        pretrained.fetch_weights("resnet18", tmp_path)
    assert not path.exists()


@pytest.mark.slow
def test_a_changed_npz_source_rebuilds_the_dataset(tmp_path):
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf", keep_studies=())  # the data job alone: no built-in study to check
    rng = np.random.default_rng(0)
    npz = workdir / "source.npz"
    np.savez(npz, x=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), y=np.arange(60) % 10)
    (workdir / "overlay.yaml").write_text(textwrap.dedent(f"""
        results: results/faults
        data:
          datasets:
            cifar10: {{source: npz, npz: {{train: {npz}}}, split_test_from_train: 20}}
    """))
    target = "results/faults/data/cifar10.pt"
    # Target first; one job per run: the job server would cost more to start than it saves.
    args = [target, "--cores", "1", "--configfile", "presets/smoke.yaml", "overlay.yaml", "--config", "job_server=False"]
    built = snakemake(workdir, *args, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    first = json.loads((workdir / f"{target}.json").read_text())["meta"]["npz"]["train"]["sha256"]
    assert "Nothing to be done" in snakemake(workdir, "-n", *args).stdout
    np.savez(npz, x=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), y=np.arange(60) % 10)
    rebuilt = snakemake(workdir, *args, timeout=600)  # says why it runs the job, as a dry run would
    assert rebuilt.returncode == 0
    out = rebuilt.stdout + rebuilt.stderr
    assert "prepare_dataset" in out and "Updated input files" in out
    assert json.loads((workdir / f"{target}.json").read_text())["meta"]["npz"]["train"]["sha256"] != first


@pytest.mark.slow
def test_a_batch_too_large_for_memory_names_the_batch_size_and_the_setting(tmp_path):
    # A memory cap (RLIMIT_AS, set after torch has loaded) stands for a small machine.
    script = textwrap.dedent("""
        import json, resource, sys
        from pathlib import Path
        from cnnrepro import config as cfg
        from cnnrepro.data.compact import write_compact
        from cnnrepro.data.sources import make_synthetic
        from cnnrepro.engine import train
        tmp = Path(sys.argv[1])
        data = tmp / "cifar10.pt"
        write_compact(make_synthetic("cifar10", 512, 64), data, {"dataset": "cifar10"})
        study = {"datasets": ["cifar10"], "models": ["resnet18_cifar"],
                 "recipe": {"optimizer": "sgd", "lr": 0.1, "batch_size": 512, "epochs": 1}}
        (settings,) = cfg.settings_by_run(cfg.validate({"studies": {"oom": study}, "device": "cpu"})).values()
        with open("/proc/self/status") as status:
            vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 1500 * 2**20, resource.RLIM_INFINITY))
        outputs = train.RunOutputs(tmp / "w.pt", tmp / "h.csv", tmp / "m.json", tmp / "c.pt")
        try:
            train.train_run(settings, data, outputs, threads=1)
            print(json.dumps({"error": None}))
        except train.OutOfMemory as error:
            print(json.dumps({"error": str(error)}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    message = json.loads(out.stdout.strip().splitlines()[-1])["error"]
    assert message and "out of host memory with batches of 512" in message and "Lower recipe.batch_size" in message
