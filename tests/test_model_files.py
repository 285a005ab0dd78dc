"""Your own network: ``model_files`` in the config imports each file, whose builders register like the built-ins;
the file's sha256 is part of the runs of its models; a file that fails, registers nothing or takes a taken name is
refused before any job, naming the file and the line; a network whose output is not one logit per class is named
at start-up (on the meta device)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from cnnrepro import config as cfg
from cnnrepro import models, startup
from cnnrepro.engine.recipe import build_run_model
from tests.test_e2e import REPO, copy_workflow, snakemake

TINY_NET = '''\
from torch import nn

from cnnrepro.models import register_model


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x))


@register_model("tiny_net", head="classifier", input_size=32, channels=3, options=("width",))
def tiny_net(num_classes, in_channels=3, input_size=32, width=8):
    return TinyNet(num_classes, in_channels, width)
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    """tiny_net.py in a working directory of its own (model_files are relative to it); unloaded afterwards."""
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "my_nets.py", TINY_NET)
    yield path
    for loaded in tmp_path.glob("*.py"):
        models.unload_model_file(loaded)


def study_config(files: list[str], **study) -> dict:
    """config.yaml's settings with one study of the user's model on CIFAR-10 (synthetic): no paper tables to find."""
    config = cfg.load_yaml(REPO / "config.yaml")
    config["data"] = {"source": "synthetic"}
    config["studies"] = {"mine": {"datasets": ["cifar10"], "models": ["tiny_net"],
                                  "freeze": ["none", "head"], "input": {"normalization": "cifar10"},
                                  "model_options": {"tiny_net": {"width": 4}},
                                  "recipe": {"optimizer": "adam", "lr": 1.0e-3, "batch_size": 16, "epochs": 1},
                                  **study}}
    return {**config, "model_files": files}


def test_a_model_file_registers_its_builders_and_its_hash_goes_into_the_runs_of_its_models(model_file):
    config = study_config(["my_nets.py"])
    config["studies"]["other"] = {"datasets": ["mnist"], "models": ["cnn"], "input": {"normalization": "mnist"},
                                  "recipe": {"lr": 0.1, "batch_size": 8, "epochs": 1}}
    settings = startup.check(config).settings
    run = settings["mine/cifar10/tiny_net/head/base/seed0"]
    digest = models.load_model_file("my_nets.py").sha256
    assert run["model_file"] == {"path": "my_nets.py", "sha256": digest}
    assert "model_file" not in settings["other/mnist/cnn/none/base/seed0"]  # a built-in's run is as before
    model = build_run_model(run)
    assert models.count_params(model, trainable_only=True) == 4 * 10 + 10  # head: the classifier, width 4
    # An edit changes the runs of its models, and only those.
    model_file.write_text(TINY_NET.replace("width=8", "width=6"))
    edited = startup.check(study_config(["my_nets.py"])).settings
    assert edited["mine/cifar10/tiny_net/head/base/seed0"]["model_file"]["sha256"] != digest
    assert models.get_spec("tiny_net").builder.__module__ != run["model_file"]  # imported again
    # A job builds the model from the settings in a process that has not imported the file, and refuses a file
    # changed since the start-up check.
    models.unload_model_file("my_nets.py")
    with pytest.raises(models.ModelFileError, match="my_nets.py changed after the workflow checked it"):
        build_run_model(run)
    assert build_run_model(edited["mine/cifar10/tiny_net/none/base/seed0"])(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


BROKEN = {
    "syntax": ("import torch\n\ndef broken(:\n    pass\n", ["'model_files[0]'", "broken.py, line 3", "SyntaxError"]),
    "raises": ("from torch import nn\n\nx = 1\nlayer = nn.Linear(2, undefined_width)\n",
               ["'model_files[0]'", "broken.py, line 4", "NameError", "undefined_width"]),
    "nothing": ("from torch import nn\n\nLAYER = nn.Linear(2, 2)\n",
                ["'model_files[0]'", "broken.py registers no model", "@register_model"]),
    "clash": ("from torch import nn\nfrom cnnrepro.models import register_model\n\n\n"
              "@register_model('resnet18', head='fc', input_size=32, channels=3)\n"
              "def mine(num_classes, in_channels=3, input_size=32):\n    return nn.Linear(3, num_classes)\n",
              ["'model_files[0]'", "broken.py, line 5", "registers model 'resnet18'",
               "the built-in cnnrepro.models.imagenet already registers"]),
    "missing": (None, ["'model_files[0]'", "broken.py: no such file", "working directory"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_model_file_that_cannot_be_used_is_refused_naming_the_file_and_the_line(kind, model_file):
    text, words = BROKEN[kind]
    if text is not None:
        write(model_file.parent, "broken.py", text)
    before = models.model_names()
    with pytest.raises(cfg.ConfigError) as error:
        startup.check(study_config(["broken.py", "my_nets.py"]))
    missing = [word for word in words if word not in str(error.value)]
    assert not missing, f"{missing} not in: {error.value}"
    assert models.model_names() == before  # nothing half-registered
    assert models.get_spec("resnet18").builder.__module__ == "cnnrepro.models.imagenet"


def test_a_network_whose_output_is_not_one_logit_per_class_is_named_at_start_up(model_file):
    write(model_file.parent, "fixed.py", TINY_NET.replace("tiny_net", "fixed_net").replace(
        "TinyNet(num_classes, in_channels, width)", "TinyNet(7, in_channels, width)"))
    config = study_config(["fixed.py"], models=["fixed_net"], model_options={})
    with pytest.raises(cfg.ConfigError, match=r"'studies.mine.models\[0\]'.*'fixed_net' \(model file fixed.py\)"
                                              r".*shape \[2, 7\].*expected \[2, 10\].*num_classes"):
        startup.check(config)


@pytest.mark.slow
def test_a_broken_model_file_stops_snakemake_before_any_job(tmp_path):
    workdir = copy_workflow(tmp_path, keep_studies=())
    write(workdir, "my_nets.py", "from torch import nn\n\nWIDTH = 4\nraise RuntimeError('half-written file')\n")
    (workdir / "overlay.yaml").write_text("model_files: [my_nets.py]\n")
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "presets/smoke.yaml", "overlay.yaml",
                       timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "config error at 'model_files[0]': my_nets.py, line 4: RuntimeError: " \
                                      "half-written file" in output, output[-3000:]
    assert "Building DAG of jobs" not in output and not (workdir / "results").exists()


def test_a_network_the_meta_device_cannot_run_is_counted_on_the_cpu(model_file):
    """A forward pass that reads values (``.item()``) passes the start-up check, so the plan counts it on the CPU."""
    write(model_file.parent, "reads.py", TINY_NET.replace("tiny_net", "reads_net").replace(
        "return self.classifier(self.body(x))",
        "scale = 1.0 if float(x.abs().sum().item()) >= 0 else 2.0\n        return self.classifier(self.body(x)) * scale"))
    config = study_config(["reads.py"], models=["reads_net"], model_options={"reads_net": {"width": 4}})
    checked = startup.check(config)
    from cnnrepro.plan import cost, runs

    settings = checked.settings["mine/cifar10/reads_net/none/base/seed0"]
    counted = cost.settings_cost(settings)
    assert counted.params == 3 * 4 * 9 + 4 + 4 * 10 + 10 and counted.flops > 0 and counted.ops > 0
    plans = runs.plan_runs(checked.config, runs.NO_SAVINGS, checked.settings)
    assert all(p.seconds(runs.rate_for("h100", checked.config)) > 0 for p in plans)


def test_a_paper_table_is_checked_again_where_the_model_file_is_not_imported(model_file, tmp_path):
    """The aggregation job checks the study's paper tables again in a process that has not imported the model
    file: a declared dataset stored at the models' own input size must not need the model to count its classes."""
    from cnnrepro.tables import specs
    from tests.test_declared_datasets import make_image_folders

    make_image_folders(tmp_path / "fruit", {"train": 4, "test": 2})
    (tmp_path / "mine.csv").write_text("model,test_acc_pct\ntiny_net,50.0\n")
    config = study_config(["my_nets.py"], datasets=["fruit"], input={"size": "model", "normalization": "auto"},
                          tables=[{"file": "mine.csv", "match": {"model": {"tiny_net": {"model": "tiny_net"}}},
                                   "metrics": {"test_acc_pct": "test_top1_pct"}}])
    config["paper_tables_dir"] = str(tmp_path)
    config["data"]["datasets"] = {"fruit": {"source": "imagefolder", "train": "fruit/train", "test": "fruit/test"}}
    checked = startup.check(config)
    assert cfg.dataset_info(checked.config, "fruit").size == 32  # tiny_net's own input size
    models.unload_model_file("my_nets.py")  # as in the aggregation job's fresh process
    with pytest.raises(KeyError):
        models.get_spec("tiny_net")
    specs.check_paper_tables(checked.config)
