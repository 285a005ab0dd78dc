"""Broken configuration stops before any job, with a message naming the field, the value and the accepted values
(issue "Fault tolerance proved by a suite", item 1).

Every overlay below goes on top of config.yaml and presets/smoke.yaml, as ``snakemake --configfile
presets/smoke.yaml <overlay>`` would merge it. Each is checked in-process through ``cnnrepro.startup.check``, the
one call workflow/rules/common.smk makes at start-up (fast tier). A representative handful, one of each way the
start-up can refuse a configuration (the schema, a name defined elsewhere, a grid axis, a model built on the meta
device, a paper table's CSV, a data file), also goes through the real ``snakemake -n`` in a temporary copy of the
workflow (slow tier): nonzero exit, the same words in its output, and no results folder. The workflow turns every
refusal of the start-up check into the same WorkflowError, so the other overlays would only repeat that path.
"""

import copy
import string
from pathlib import Path

import pytest
import yaml

from cnnrepro import config as cfg
from cnnrepro import startup
from cnnrepro.tables import summary as run_summary
from tests.test_e2e import REPO, copy_workflow, snakemake

SEED0, SEED1, SEED2 = "seed000_resnet_mnist", "seed001_resnet_mobilenet_cifar10", "seed002_squeezenet_dsc"
SEED3, SEED4 = "seed003_kmnist_fcnn_cnn", "seed004_squeezenet_transfer_cifar10"
RESNET_TOP = "conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc"
SEED1_TABLE = "file: seed001_accuracy_cifar10.csv, match: {model: {MobileNet: {model: mobilenet}}}"
ALL_METRICS = "test_top1_pct, test_acc, test_top5_pct"  # the start of the accepted summary fields


NAMES = {"SEED0": SEED0, "SEED1": SEED1, "SEED2": SEED2, "SEED3": SEED3, "SEED4": SEED4, "RESNET_TOP": RESNET_TOP,
         "SEED1_TABLE": SEED1_TABLE, "ALL_METRICS": ALL_METRICS}


def case(name: str, overlay: str, *words: str):
    """An overlay (YAML) and the words its error must contain: the field path in quotes, the value and, where
    there is a fixed set, some of the accepted values. ``$SEED1`` and the like stand for the names above."""
    fill = lambda text: string.Template(text).substitute(NAMES)  # noqa: E731
    return pytest.param(fill(overlay), tuple(map(fill, words)), id=name)


CASES = [
    # ----- wrong types -----
    case("type-top-train_threads", "train_threads: four", "'train_threads'", "'four'", "integer"),
    case("type-recipe-lr", "studies: {$SEED1: {recipe: {lr: fast}}}",
         "'studies.$SEED1.recipe.lr'", "'fast'", "number"),
    case("type-models-not-a-list", "studies: {$SEED1: {models: mobilenet}}",
         "'studies.$SEED1.models'", "'mobilenet'", "array"),
    case("type-input-rgb", "studies: {$SEED0: {input: {rgb: 1}}}",
         "'studies.$SEED0.input.rgb'", "1 is not of type 'boolean'"),
    case("type-limits-pretrained", "limits: {pretrained: 'yes'}", "'limits.pretrained'", "'yes'", "boolean"),
    case("type-grid-value-not-a-list", "studies: {$SEED4: {grid: {recipe.epochs: 50}}}",
         "'studies.$SEED4.grid.recipe.epochs'", "50", "array"),
    case("type-freeze-level", "freeze_levels: {head: fc}", "'freeze_levels.head'", "'fc'", "'all'"),
    # ----- unknown names -----
    case("unknown-model", "studies: {$SEED0: {models: [resnet19]}}",
         "'studies.$SEED0.models[0]'", "'resnet19'", "valid values: alexnet, resnet18, resnet34"),
    case("unknown-dataset", "studies: {$SEED0: {datasets: [imagenet]}}",
         "'studies.$SEED0.datasets[0]'", "'imagenet'", "valid values: mnist, kmnist, cifar10, cifar100"),
    case("unknown-dataset-under-data", "data: {datasets: {imagenet: {source: synthetic}}}",
         "'data.datasets.imagenet'", "'imagenet'", "valid values: mnist, kmnist, cifar10, cifar100"),
    case("unknown-freeze-level", "studies: {$SEED0: {freeze: [backbone]}}",
         "'studies.$SEED0.freeze[0]'", "'backbone'", "defined levels: none, head, last_two_fire_and_head"),
    case("unknown-optimizer", "studies: {$SEED1: {recipe: {optimizer: adamw}}}",
         "'studies.$SEED1.recipe.optimizer'", "'adamw'", "valid values: sgd, adam, rmsprop, adadelta"),
    case("unknown-schedule", "studies: {$SEED1: {recipe: {schedule: cosine}}}",
         "'studies.$SEED1.recipe.schedule'", "'cosine'", "valid values: constant, plateau_drop, keras_plateau"),
    case("unknown-loss", "studies: {$SEED1: {recipe: {loss: nll}}}",
         "'studies.$SEED1.recipe.loss'", "'nll'", "valid values: ce, mse"),
    case("unknown-normalization", "studies: {$SEED0: {input: {normalization: zca}}}",
         "'studies.$SEED0.input.normalization'", "'zca'", "defined: unit, mnist, kmnist, cifar10, cifar100, imagenet"),
    case("unknown-augmentation", "studies: {$SEED1: {augment: cutout}}",
         "'studies.$SEED1.augment'", "'cutout'", "valid values: none, crop_flip, flip, kmnist10x"),
    case("unknown-device", "device: tpu", "'device'", "'tpu'", "valid values: auto, cpu, cuda"),
    case("unknown-data-source", "data: {source: hdf5}", "'data.source'", "'hdf5'",
         "valid values: torchvision, npz, synthetic"),
    case("unknown-size-unit", "studies: {$SEED2: {size_unit: {cifar10: MB}}}",
         "'studies.$SEED2.size_unit.cifar10'", "'MB'", "valid values: MiB, MB_1024000"),
    case("unknown-exclude-model", "studies: {$SEED3: {exclude: [{model: cnn_nopol, augment: kmnist10x}]}}",
         "'studies.$SEED3.exclude[0].model'", "'cnn_nopol'", "valid values: alexnet, resnet18"),
    # ----- zero, negative or out-of-range sizes and rates -----
    case("zero-batch_size", "studies: {$SEED1: {recipe: {batch_size: 0}}}",
         "'studies.$SEED1.recipe.batch_size'", "0 is less than the minimum of 1"),
    case("negative-lr", "studies: {$SEED1: {recipe: {lr: -1}}}",
         "'studies.$SEED1.recipe.lr'", "-1 is less than or equal to the minimum of 0"),
    case("zero-epochs", "studies: {$SEED1: {recipe: {epochs: 0}}}",
         "'studies.$SEED1.recipe.epochs'", "0 is less than the minimum of 1"),
    case("input-size-3", "studies: {$SEED0: {input: {size: 3}}}",
         "'studies.$SEED0.input.size'", "3 is less than the minimum of 8"),
    case("val_fraction-1.5", "studies: {$SEED4: {val_fraction: 1.5}}",
         "'studies.$SEED4.val_fraction'", "1.5 is greater than or equal to the maximum of 1"),
    case("factor-above-1", "studies: {$SEED2: {recipe: {factor: 1.5}}}",
         "'studies.$SEED2.recipe.factor'", "1.5 is greater than the maximum of 1"),
    case("negative-seed", "studies: {$SEED1: {seeds: [-1]}}",
         "'studies.$SEED1.seeds[0]'", "-1 is less than the minimum of 0"),
    case("zero-limits-max_epochs", "limits: {max_epochs: 0}", "'limits.max_epochs'", "0 is less than the minimum of 1"),
    case("zero-benchmark-runs", "benchmark: {runs: 0}", "'benchmark.runs'", "0 is less than the minimum of 1"),
    case("tiny-synthetic_train", "data: {synthetic_train: 5}", "'data.synthetic_train'",
         "5 is less than the minimum of 10"),
    case("grid-batch_size-0", "studies: {$SEED4: {grid: {recipe.batch_size: [250, 0]}}}",
         "'studies.$SEED4.recipe.batch_size'", "0 is less than the minimum of 1",
         "variant batch_size-0_epochs-50, whose grid sets recipe.batch_size=0"),
    # ----- empty and repeated lists -----
    case("empty-models", "studies: {$SEED1: {models: []}}", "'studies.$SEED1.models'", "[] should be non-empty"),
    case("empty-seeds", "studies: {$SEED1: {seeds: []}}", "'studies.$SEED1.seeds'", "[] should be non-empty"),
    case("empty-datasets", "studies: {$SEED1: {datasets: []}}",
         "'studies.$SEED1.datasets'", "[] should be non-empty"),
    case("empty-grid-values", "studies: {$SEED4: {grid: {recipe.epochs: []}}}",
         "'studies.$SEED4.grid.recipe.epochs'", "[] should be non-empty"),
    case("empty-benchmark-batch_sizes", "benchmark: {batch_sizes: []}", "'benchmark.batch_sizes'",
         "[] should be non-empty"),
    case("repeated-model", "studies: {$SEED3: {models: [cnn, fcnn, cnn]}}",
         "'studies.$SEED3.models'", "['cnn', 'fcnn', 'cnn'] has non-unique elements"),
    # ----- misspelt keys, at every level -----
    case("misspelt-top", "devise: cpu", "'devise'", "unknown key 'devise'", "valid keys in '<top level>': results",
         "device"),
    case("misspelt-data", "data: {sorce: npz}", "'data.sorce'", "unknown key 'sorce'", "source, synthetic_train"),
    case("misspelt-data-dataset", "data: {datasets: {mnist: {sorce: synthetic}}}", "'data.datasets.mnist.sorce'",
         "unknown key 'sorce'", "valid keys in 'data.datasets.mnist': source, npz, split_test_from_train"),
    case("misspelt-limits", "limits: {max_epoch: 1}", "'limits.max_epoch'", "unknown key 'max_epoch'",
         "max_epochs, input_size, pretrained, augment_copies"),
    case("misspelt-benchmark", "benchmark: {run: 5}", "'benchmark.run'", "unknown key 'run'",
         "cpu_threads, exclusive, runs"),
    case("misspelt-speed", "speed: {tf_32: true}", "'speed.tf_32'", "unknown key 'tf_32'", "amp_bf16, tf32"),
    case("misspelt-study", "studies: {$SEED1: {modles: [mobilenet]}}", "'studies.$SEED1.modles'",
         "unknown key 'modles'", "title, reference, datasets, models"),
    case("misspelt-input", "studies: {$SEED0: {input: {normalisation: imagenet}}}",
         "'studies.$SEED0.input.normalisation'", "unknown key 'normalisation'", "size, rgb, normalization"),
    case("misspelt-recipe", "studies: {$SEED1: {recipe: {epoch: 3}}}", "'studies.$SEED1.recipe.epoch'",
         "unknown key 'epoch'", "optimizer, lr, momentum"),
    case("misspelt-table-entry", "studies: {$SEED1: {tables: [{$SEED1_TABLE, metrics: {test_acc_pct: "
         "test_top1_pct}, note: [{text: x}]}]}}", "'studies.$SEED1.tables[0].note'", "unknown key 'note'",
         "file, match, where, metrics, notes"),
    case("misspelt-note", "studies: {$SEED1: {tables: [{$SEED1_TABLE, metrics: {test_acc_pct: "
         "test_top1_pct}, notes: [{metrc: test_acc_pct, text: x}]}]}}", "'studies.$SEED1.tables[0].notes[0].metrc'",
         "unknown key 'metrc'", "text, row, metric"),
    case("misspelt-exclude-field", "studies: {$SEED3: {exclude: [{modle: cnn_nopool, augment: kmnist10x}]}}",
         "'studies.$SEED3.exclude[0].modle'", "unknown run field 'modle'", "dataset, model, freeze, seed, augment"),
    case("exclude-value-the-grid-never-takes", "studies: {$SEED3: {exclude: [{model: cnn_nopool, augment: "
         "kmnist_10x}]}}", "'studies.$SEED3.exclude[0].augment'", "'kmnist_10x'", "excludes nothing",
         "valid values: none, kmnist10x"),
    case("misspelt-model-option", "studies: {$SEED2: {model_options: {mobilenet: {legacy_bn: true}}}}",
         "'studies.$SEED2.model_options.mobilenet.legacy_bn'", "no option 'legacy_bn'", "accepts: legacy_bn_init"),
    case("recipe-key-the-optimizer-does-not-use", "studies: {$SEED1: {recipe: {momentum: 0.9}}}",
         "'studies.$SEED1.recipe.momentum'", "optimizer 'adam' does not use 'momentum'", "uses: betas, eps"),
    case("missing-required-recipe", "studies: {extra: {datasets: [mnist], models: [cnn]}}",
         "'studies.extra.recipe'", "required key 'recipe' is missing"),
    # ----- a grid over a key that does not exist -----
    case("grid-misspelt-recipe-key", "studies: {$SEED1: {grid: {recipe.batchsize: [16, 32]}}}",
         "'studies.$SEED1.grid.recipe.batchsize'", "unknown grid axis 'recipe.batchsize'", "batch_size"),
    case("grid-misspelt-input-key", "studies: {$SEED1: {grid: {input.sise: [32, 48]}}}",
         "'studies.$SEED1.grid.input.sise'", "unknown grid axis 'input.sise'", "size, rgb, normalization"),
    case("grid-not-an-axis", "studies: {$SEED1: {grid: {optimizer: [sgd, adam]}}}",
         "'studies.$SEED1.grid.optimizer'", "unknown grid axis 'optimizer'", "augment, pretrained, eval_split"),
    # ----- freeze levels whose prefixes match nothing in a model of a study using them -----
    case("freeze-prefix-matches-no-module", "freeze_levels: {partial: [layer4, layer9]}\n"
         "studies: {$SEED0: {freeze: [partial]}}", "'freeze_levels.partial[1]'", "study $SEED0",
         "freeze level 'partial'", "prefix 'layer9'", "its top-level modules: $RESNET_TOP"),
    case("freeze-prefix-of-another-model", "studies: {$SEED0: {freeze: [last_two_fire_and_head]}}",
         "'freeze_levels.last_two_fire_and_head[0]'", "study $SEED0", "prefix 'features.11'", "model resnet18",
         "its top-level modules: $RESNET_TOP"),
    case("freeze-level-trains-nothing", "freeze_levels: {activations: [relu]}\nstudies: {$SEED0: "
         "{freeze: [activations]}}", "'freeze_levels.activations'", "freeze level 'activations'", "study $SEED0",
         "hold no parameter", "its top-level modules: $RESNET_TOP"),
    # ----- paper tables -----
    case("table-missing-csv", "studies: {$SEED1: {tables: [{file: no_such_table.csv, metrics: {acc: "
         "test_top1_pct}}]}}", "'studies.$SEED1.tables[0].file'", "no_such_table.csv", "does not exist"),
    case("table-match-column-missing", "studies: {$SEED1: {tables: [{file: seed001_accuracy_cifar10.csv, "
         "match: {network: {MobileNet: {model: mobilenet}}}, metrics: {test_acc_pct: test_top1_pct}}]}}",
         "'studies.$SEED1.tables[0].match.network'", "'network' is not a column",
         "its columns: model, test_acc_pct, qualifier_in_text"),
    case("table-metrics-column-missing", "studies: {$SEED1: {tables: [{$SEED1_TABLE, metrics: "
         "{test_acc_pct: test_top1_pct, top1_pct: test_top1_pct}}]}}", "'studies.$SEED1.tables[0].metrics.top1_pct'",
         "'top1_pct' is not a column", "its columns: model, test_acc_pct, qualifier_in_text"),
    case("table-metric-no-run-produces", "studies: {$SEED1: {tables: [{$SEED1_TABLE, metrics: "
         "{test_acc_pct: test_top1_percent}}]}}", "'studies.$SEED1.tables[0].metrics.test_acc_pct'",
         "'test_top1_percent' is not a field", "accepted: $ALL_METRICS", "test_f1_by_class.<key>"),
    case("table-metric-template-field-unknown", "studies: {$SEED3: {tables: [{file: seed003_table1_f1_test.csv, "
         "metrics: {f1_score: 'test_f1_per_class.{class}'}}]}}", "'studies.$SEED3.tables[0].metrics.f1_score'",
         "'test_f1_per_class.0' is not a field", "accepted: $ALL_METRICS"),
    case("table-metric-template-column-missing", "studies: {$SEED3: {tables: [{file: seed003_table1_f1_test.csv,"
         " metrics: {f1_score: 'test_f1_by_class.{klass}'}}]}}", "'studies.$SEED3.tables[0].metrics.f1_score'",
         "{klass}", "is not a column", "experiment, model, data_augmentation_10x, max_pooling, class, f1_score"),
    case("table-selects-by-a-misspelt-run-field", "studies: {$SEED1: {tables: [{file: seed001_accuracy_cifar10.csv,"
         " match: {model: {MobileNet: {modle: mobilenet}}}, metrics: {test_acc_pct: test_top1_pct}}]}}",
         "'studies.$SEED1.tables[0].match.model.MobileNet'", "'modle' is not a run field",
         "dataset, model, freeze, variant, seed, augment"),
    case("table-where-unknown-model", "studies: {$SEED1: {tables: [{file: seed001_accuracy_cifar10.csv, "
         "where: {model: mobilenet_v2}, metrics: {test_acc_pct: test_top1_pct}}]}}",
         "'studies.$SEED1.tables[0].where'", "unknown model 'mobilenet_v2'", "valid values: alexnet, resnet18"),
    case("table-note-metric-not-a-column", "studies: {$SEED1: {tables: [{$SEED1_TABLE, metrics: {test_acc_pct: "
         "test_top1_pct}, notes: [{metric: top1_acc_pct, text: x}]}]}}", "'studies.$SEED1.tables[0].notes[0]'",
         "metric 'top1_acc_pct' is not a metric column of seed001_accuracy_cifar10.csv",
         "its metric columns (in the CSV and under metrics): test_acc_pct"),
    # ----- data -----
    case("npz-file-missing", "data: {datasets: {mnist: {source: npz, npz: {train: no_such_dir/mnist_train.npz, "
         "test: no_such_dir/mnist_test.npz}}}}", "'data.datasets.mnist.npz.train'", "no_such_dir/mnist_train.npz",
         "does not exist", "expected an npz file with keys x (uint8"),
    case("npz-source-without-files", "data: {datasets: {cifar10: {source: npz}}}", "'data.datasets.cifar10.npz'",
         "source npz", "{train: path, test: path}"),
    case("npz-without-a-test-split", "data: {datasets: {cifar10: {source: npz, npz: {train: config.yaml}}}}",
         "'data.datasets.cifar10.npz'", "no test file", "split_test_from_train"),
    case("npz-files-for-another-source", "data: {datasets: {mnist: {npz: {train: config.yaml, test: config.yaml}}}}",
         "'data.datasets.mnist.npz'", "the source is synthetic", "never reads them"),
    case("empty-results-path", "results: ''", "'results'", "'' should be non-empty"),
    case("test-split-carved-from-synthetic", "data: {datasets: {kmnist: {split_test_from_train: 100}}}",
         "'data.datasets.kmnist.split_test_from_train'", "100", "the synthetic source", "has its own test split"),
    # ----- models that cannot take what the run gives them -----
    case("pretrained-from-scratch-model", "limits: {pretrained: null}\nstudies: {$SEED1: {pretrained: true}}",
         "'studies.$SEED1.pretrained'", "study $SEED1", "model 'resnet18_cifar'", "has no pretrained weights",
         "Models with ImageNet weights: resnet18, resnet34, resnet50, squeezenet1_1"),
    case("pretrained-model-on-grey-images", "studies: {$SEED0: {input: {rgb: false}}}",
         "'studies.$SEED0.input.rgb'", "model 'resnet18' takes 3-channel images", "valid value here: true"),
    case("native-size-model-on-other-images", "studies: {extra: {datasets: [cifar10], models: [fcnn], "
         "input: {normalization: cifar10}, recipe: {lr: 0.1, batch_size: 8, epochs: 1}}}", "'studies.extra.input.size'",
         "model 'fcnn' cannot take the images", "3x32x32", "native input is 1x28x28"),
    case("normalization-for-other-channels", "studies: {$SEED3: {input: {normalization: imagenet}}}",
         "'studies.$SEED3.input.normalization'", "'imagenet' has 3 mean values", "expected 1 value per statistic"),
    case("normalization-mean-std-lengths", "normalization: {odd: {mean: [0.5, 0.5, 0.5], std: [0.25]}}",
         "'normalization.odd'", "mean has 3 values", "std has 1"),
    # ----- numbers YAML reads that no bound refuses, folders that are files -----
    case("nan-lr", "studies: {$SEED1: {recipe: {lr: .nan}}}", "'studies.$SEED1.recipe.lr'",
         "nan is not a finite number"),
    case("inf-lr", "studies: {$SEED1: {recipe: {lr: .inf}}}", "'studies.$SEED1.recipe.lr'",
         "inf is not a finite number"),
    case("inf-lr-in-a-grid", "studies: {$SEED4: {grid: {recipe.lr: [1.0e-3, .inf]}}}",
         "'studies.$SEED4.grid.recipe.lr[1]'", "inf is not a finite number"),
    case("results-is-a-file", "results: config.yaml", "'results'", "config.yaml is an existing file, not a folder"),
    # ----- torchvision's zoo -----
    case("unknown-zoo-model", "studies: {$SEED1: {models: [torchvision.densenet12]}}", "'studies.$SEED1.models[0]'",
         "'torchvision.densenet12' is not one of torchvision's", "closest: torchvision.densenet121"),
    case("zoo-weights-member-missing", "studies: {$SEED1: {models: [torchvision.resnet50], model_options: "
         "{torchvision.resnet50: {weights: IMAGENET1K_V3}}}}",
         "'studies.$SEED1.model_options.torchvision.resnet50.weights'", "'IMAGENET1K_V3' is not a weights member",
         "its members: IMAGENET1K_V1, IMAGENET1K_V2"),
]


@pytest.fixture(scope="module")
def smoke_config():
    """config.yaml with presets/smoke.yaml merged, unvalidated (snakemake's config before --configfile <overlay>)."""
    return cfg.deep_merge(cfg.load_yaml(REPO / "config.yaml"), cfg.load_yaml(REPO / "presets" / "smoke.yaml"))


def start_up(config: dict) -> dict:
    """What workflow/rules/common.smk runs before any job."""
    return startup.check(config).settings


def test_there_are_at_least_30_distinct_overlays():
    overlays = [c.values[0] for c in CASES]
    assert len(set(overlays)) == len(overlays) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("overlay, words", CASES)
def test_a_broken_overlay_is_refused_at_start_up(smoke_config, overlay, words, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths resolve against the working directory, as snakemake's do
    config = cfg.deep_merge(smoke_config, yaml.safe_load(overlay))
    with pytest.raises(cfg.ConfigError) as error:
        start_up(config)
    message = str(error.value)
    assert message.startswith("config error"), message
    missing = [word for word in words if word not in message]
    assert not missing, f"{missing} not in: {message}"


@pytest.mark.parametrize("overlays", [
    [], ["presets/smoke.yaml"], ["presets/quick.yaml"], ["presets/fast.yaml"], ["presets/offline.yaml"],
    ["presets/smoke.yaml", "tests/data/sixth_study.yaml"], ["presets/smoke.yaml", "presets/fast.yaml"],
])
def test_the_shipped_configs_pass_every_check(overlays, monkeypatch):
    monkeypatch.chdir(REPO)
    config = cfg.load_yaml(REPO / "config.yaml")
    for overlay in overlays:
        config = cfg.deep_merge(config, cfg.load_yaml(REPO / overlay))
    for dataset, override in config.get("data", {}).get("datasets", {}).items():
        for path in (override.get("npz") or {}).values():
            if not Path(path).is_file():
                pytest.skip(f"{overlays}: {path} (the real data in ../shared/data) is absent here")
    assert start_up(config)


def test_pretrained_on_a_from_scratch_model_is_fine_when_the_limits_turn_pretraining_off(smoke_config, monkeypatch):
    monkeypatch.chdir(REPO)
    config = cfg.deep_merge(smoke_config, {"studies": {SEED1: {"pretrained": True}}})  # limits.pretrained: false
    settings = start_up(config)
    assert not any(s["pretrained"] for s in settings.values())


def test_the_model_check_builds_each_model_once_and_on_the_meta_device(smoke_config, monkeypatch):
    import torch

    from cnnrepro.models import build

    monkeypatch.chdir(REPO)
    cfg._probe_model.cache_clear()
    built = []
    real = build.build_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        built.append((args[0], next(model.parameters()).device))
        return model

    monkeypatch.setattr(build, "build_model", spy)
    settings = start_up(copy.deepcopy(smoke_config))
    assert len(built) == len(set((s["model"], s["num_classes"], s["in_channels"], s["input"]["size"],
                                  str(s["model_options"])) for s in settings.values()))
    assert {device for _, device in built} == {torch.device("meta")}
    cfg._probe_model.cache_clear()


def test_a_jobs_own_snakemake_skips_the_model_builds_and_gets_the_same_settings(smoke_config, monkeypatch):
    """In a job's own snakemake process (a SLURM job, a group's member; the workflow passes is_main_process), the
    start-up check builds no model: the main process did, before it submitted the job."""
    from cnnrepro.models import build

    monkeypatch.chdir(REPO)
    cfg._probe_model.cache_clear()
    built = []
    real = build.build_model
    monkeypatch.setattr(build, "build_model", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    in_job = startup.check(copy.deepcopy(smoke_config), probe_models=False)
    assert built == []
    main = startup.check(copy.deepcopy(smoke_config))
    assert built and in_job.settings == main.settings and in_job.figures == main.figures
    cfg._probe_model.cache_clear()


def test_a_yaml_syntax_error_names_the_file_the_line_and_the_column(tmp_path, capsys, monkeypatch):
    """Our loader (cnnrepro's commands, startup.load) names where the YAML breaks. Snakemake reads its --configfile
    overlays itself, before the workflow starts, and names neither: `cnnrepro check --configfile` is the way."""
    monkeypatch.chdir(REPO)
    bad = tmp_path / "my_study.yaml"
    bad.write_text("studies:\n  mine:\n    models: [cnn, fcnn}\n")
    with pytest.raises(cfg.ConfigError, match=r"my_study.yaml, line 3, column 23: YAML syntax error.*expected ','"):
        cfg.load_yaml(bad)
    from cnnrepro import cli

    assert cli.main(["--configfile", str(bad), "check"]) == 2
    assert f"{bad}, line 3" in capsys.readouterr().err


def test_the_metric_fields_are_the_numbers_summarize_writes():
    from tests.test_aggregate import bench_cpu, fake_record

    record = fake_record("s", "cifar10", "m", extra={"selected_epoch": 3, "peak_memory_bytes": 1})
    gpu = {"measured": True, "latency_paper": {"mean_ms": 1.0, "std_ms": 0.1}, "latency_correct": {"median_ms": 1.0},
           "device": {"device_name": "gpu"}}
    summary = run_summary.summarize(record, bench_cpu(), gpu)
    numbers = {k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers - {"seed"} == set(run_summary.METRIC_FIELDS)
    assert set(run_summary.METRIC_MAPS) == {k for k, v in summary.items() if isinstance(v, dict)} - {"recipe", "grid",
                                                                                                  "input"}
    assert run_summary.metric_field_problem("test_f1_by_class.9", 10) is None
    assert run_summary.metric_field_problem("test_f1_by_class.macro avg", 10) is None
    assert "0 .. 9" in run_summary.metric_field_problem("test_f1_by_class.10", 10)
    assert "accepted: test_top1_pct" in run_summary.metric_field_problem("device_name")


# ----- the same overlays through the real snakemake command -----

SLOW_TEST = "test_a_broken_overlay_stops_snakemake_before_any_job"
# One overlay per kind of start-up refusal: the schema (a type, a misspelt key), a name defined elsewhere in the
# config, a grid axis, the model built on the meta device (a freeze prefix, the images it takes), a paper table's
# CSV, a data file.
THROUGH_SNAKEMAKE = ("type-top-train_threads", "misspelt-recipe", "unknown-model", "unknown-freeze-level",
                     "grid-misspelt-recipe-key",
                     "freeze-prefix-matches-no-module", "native-size-model-on-other-images",
                     "table-match-column-missing", "npz-file-missing", "results-is-a-file")
SNAKEMAKE_CASES = [c for c in CASES if c.id in THROUGH_SNAKEMAKE]


def test_the_cases_through_snakemake_are_cases_of_the_list():
    assert [c.id for c in SNAKEMAKE_CASES] == [i for i in (c.id for c in CASES) if i in THROUGH_SNAKEMAKE]
    assert len(SNAKEMAKE_CASES) == len(THROUGH_SNAKEMAKE)


@pytest.fixture(scope="module")
def snakemake_runs(tmp_path_factory, request):
    """case id -> a future of (exit code, output, whether a results folder appeared) of ``snakemake -n`` on the
    overlay. The selected cases run two at a time (2 cores), each in one of two copies of the workflow."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    overlays = {c.id: c.values[0] for c in CASES}
    selected = [item.callspec.id for item in request.session.items
                if item.originalname == SLOW_TEST and item.callspec.id in overlays]
    copies: queue.Queue = queue.Queue()
    for k in range(2):
        copies.put(copy_workflow(tmp_path_factory.mktemp(f"faults_config{k}")))

    def run(case_id: str):
        workdir = copies.get()
        try:
            name = f"bad_{case_id}.yaml"
            (workdir / name).write_text(overlays[case_id] + "\n")
            result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "presets/smoke.yaml", name,
                               timeout=300)
            return result.returncode, result.stdout + result.stderr, (workdir / "results").exists()
        finally:
            copies.put(workdir)

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {case_id: pool.submit(run, case_id) for case_id in selected}


@pytest.mark.slow
@pytest.mark.parametrize("overlay, words", SNAKEMAKE_CASES)
def test_a_broken_overlay_stops_snakemake_before_any_job(snakemake_runs, overlay, words, request):
    returncode, output, results = snakemake_runs[request.node.callspec.id].result()
    assert returncode != 0, output[-3000:]
    assert "config error" in output, output[-3000:]
    missing = [word for word in words if word not in output]
    assert not missing, f"{missing} not in: {output[-3000:]}"
    assert not results, "a results folder was created"
    assert "Building DAG of jobs" not in output and "localrule" not in output  # stopped while reading the config
