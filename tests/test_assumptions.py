"""Unstated settings: declared per study, checked at start-up, swept one at a time, and compared with the paper."""

import json
import re

import pandas as pd
import pytest
import yaml

from cnnrepro import cli, startup
from cnnrepro import config as cfg
from cnnrepro.plan import rates
from cnnrepro.tables import assumptions, select
from cnnrepro.tables.summary import summarize
from tests.conftest import REPO
from tests.test_aggregate import fake_record
from tests.test_e2e import copy_workflow, snakemake

SEED0, SEED1, SEED2 = "seed000_resnet_mnist", "seed001_resnet_mobilenet_cifar10", "seed002_squeezenet_dsc"
FIXTURE = "tests/data/assumed_study.yaml"  # a study whose made-up paper trained 2 epochs where it guesses 1
STUDY = "assumed_epochs"


def merged(*overlays: str) -> dict:
    config = cfg.load_yaml(REPO / "config.yaml")
    for overlay in overlays:
        config = cfg.deep_merge(config, cfg.load_yaml(REPO / overlay))
    return config


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # paper tables and fixtures resolve as snakemake's working directory resolves them


# ------------------------------------------------------------------------------------------ declared, not commented


def test_the_built_in_studies_declare_their_guesses_instead_of_commenting_them():
    text = (REPO / "config.yaml").read_text()
    assert not re.search(r"\[(inferred|choice)\]", text)  # every one is an assumptions entry now
    config = cfg.validate(merged())
    declared = {name: [a["key"] for a in study["assumptions"]] for name, study in config["studies"].items()}
    assert declared[SEED0] == ["recipe.optimizer", "recipe.bn_frozen", "input.size", "input.normalization"]
    assert "recipe.batch_size" in declared[SEED1]
    assert "recipe.loss" in declared["seed004_squeezenet_transfer_cifar10"]
    c100 = next(a for a in config["studies"][SEED2]["assumptions"] if a["key"] == "input.normalization")
    assert c100["where"] == {"dataset": "cifar100"} and c100["basis"] == "inferred"
    for study in config["studies"].values():
        for assumption in study["assumptions"]:
            assert assumption["reason"] and assumption["basis"] in ("inferred", "choice", "code")


BROKEN = [  # (the entry beside basis and reason, the field the message names, words it says)
    ("key: recipe.optimiser", "'studies.X.assumptions[0].key'", ("unknown grid axis 'recipe.optimiser'",)),
    ("key: recipe.optimizer\n  alternatives: [adamw]", "'studies.X.assumptions[0].alternatives[0]'",
     ("'adamw' is not a valid value of recipe.optimizer", "valid values: sgd, adam")),
    ("key: recipe.optimizer\n  alternatives: [sgd]", "'studies.X.assumptions[0].alternatives[0]'",
     ("'sgd' is the value the study uses",)),
    ("key: input.size\n  alternatives: [3]", "'studies.X.assumptions[0].alternatives[0]'",
     ("3 is less than the minimum",)),
    ("key: recipe.lr\n  where: {modle: resnet18}", "'studies.X.assumptions[0].where.modle'", ("unknown run field",)),
    ("key: recipe.lr\n  where: {model: resnet19}", "'studies.X.assumptions[0].where.model'",
     ("unknown model 'resnet19'",)),
    ("key: recipe.lr\n  basis: hunch", "'studies.X.assumptions[0].basis'",
     ("'hunch' is not a valid value", "inferred, choice, code")),
]


@pytest.mark.parametrize("entry, field, words", BROKEN)
def test_a_broken_assumption_is_refused_at_start_up_naming_the_field(entry, field, words, in_repo):
    assumption = {"basis": "choice", "reason": "r", **yaml.safe_load(entry.replace("\n  ", "\n"))}
    config = merged("presets/smoke.yaml")
    config["studies"][SEED0]["assumptions"] = [assumption]
    with pytest.raises(cfg.ConfigError) as error:
        startup.check(config)
    message = str(error.value)
    assert field.replace("X", SEED0) in message, message
    assert all(word in message for word in words), message


def test_an_assumption_over_a_grid_axis_or_a_headline_no_table_prints_is_refused(in_repo):
    config = merged("presets/smoke.yaml")
    config["studies"][SEED0]["grid"] = {"recipe.lr": [1e-4, 1e-3]}
    config["studies"][SEED0]["assumptions"] = [{"key": "recipe.lr", "basis": "choice", "reason": "r"}]
    with pytest.raises(cfg.ConfigError, match=r"assumptions\[0\].key'.*axis of 'studies.seed000_resnet_mnist.grid'"):
        startup.check(config)
    config = merged("presets/smoke.yaml")
    config["studies"][SEED1]["headline"] = "top1"
    with pytest.raises(cfg.ConfigError, match=r"'studies.seed001_resnet_mobilenet_cifar10.headline'.*test_acc_pct"):
        startup.check(config)


# ------------------------------------------------------------------------------------------ swept one at a time


def test_without_the_sweep_every_run_and_its_settings_are_as_without_assumptions(in_repo):
    declared = startup.check(merged("presets/smoke.yaml")).settings
    bare = merged("presets/smoke.yaml")
    for study in bare["studies"].values():
        study.pop("assumptions", None)
        study.pop("headline", None)
    assert declared == startup.check(bare).settings
    assert not any("assumption" in settings for settings in declared.values())


def test_the_sweep_changes_one_setting_at_a_time_and_only_where_it_matters(in_repo):
    base = startup.check(merged("presets/smoke.yaml")).settings
    swept = startup.check(merged("presets/smoke.yaml", "presets/assumptions.yaml")).settings
    assert set(base) < set(swept)
    extra = {run_id: s for run_id, s in swept.items() if run_id not in base}
    assert all(s.get("assumption") for s in extra.values())

    def count(study, key):
        return sum(1 for s in extra.values() if s["study"] == study and s["assumption"]["key"] == key)

    # Seed 000: three runs per alternative; its 224 px vs 28 px alternative disappears under the smoke preset's
    # 32 px cap (both would train at 32 px: the study's own runs, not repeated).
    assert [count(SEED0, k) for k in ("recipe.optimizer", "recipe.bn_frozen", "input.normalization", "input.size")] \
        == [3, 3, 3, 0]
    # Seed 002's normalisation concerns the CIFAR-100 runs only; its other settings all ten.
    assert count(SEED2, "input.normalization") == 5 and count(SEED2, "augment") == 10
    assert all(s["dataset"] == "cifar100" for s in extra.values()
               if s["study"] == SEED2 and s["assumption"]["key"] == "input.normalization")
    # One setting changed: Adam instead of SGD drops SGD's momentum and takes Adam's defaults, nothing else moves.
    adam = next(s for s in extra.values() if s["study"] == SEED0 and s["assumption"]["value"] == "adam")
    own = base[adam["run_id"].replace("base__recipe.optimizer-adam", "base")]
    assert adam["recipe"]["optimizer"] == "adam" and "momentum" not in adam["recipe"] and "betas" in adam["recipe"]
    same = {k: v for k, v in adam.items() if k not in ("recipe", "run_id", "variant", "assumption")}
    assert same == {k: v for k, v in own.items() if k not in ("recipe", "run_id", "variant")}
    assert adam["grid"] == own["grid"] and adam["variant"] == "base__recipe.optimizer-adam"
    assert all(re.fullmatch(r"[A-Za-z0-9_.+-]+", s["variant"]) for s in extra.values())  # safe in run paths


def test_the_paper_tables_select_only_the_declared_runs():
    own = summarize(fake_record("s", "mnist", "cnn"))
    tried = summarize(fake_record("s", "mnist", "cnn", variant="base__recipe.lr-0.1",
                                  extra={"settings": {**fake_record("s", "mnist", "cnn")["settings"],
                                                      "variant": "base__recipe.lr-0.1",
                                                      "assumption": {"index": 0, "key": "recipe.lr",
                                                                     "value": 0.1, "basis": "choice"}}}))
    assert tried["assumption"]["key"] == "recipe.lr"
    assert select.matching([own, tried], "s", {"model": "cnn"}) == [own]


def test_the_comparison_marks_the_value_the_papers_numbers_support(in_repo, tmp_path):
    config = startup.check(merged("presets/smoke.yaml", FIXTURE)).config
    records = {"base": 1, "base__recipe.epochs-2": 2, "base__recipe.batch_size-32": 1}
    summaries = []
    for variant, epochs in records.items():
        record = fake_record(STUDY, "mnist", "cnn", variant=variant, top1=0.7, extra={"epochs_run": epochs})
        if variant != "base":
            key, value = variant.split("__")[1].split("-")
            record["settings"]["assumption"] = {"index": ["recipe.epochs", "recipe.batch_size"].index(key),
                                                "key": key, "value": int(value), "basis": "choice"}
        summaries.append(summarize(record))
    paper = {"assumed_epochs.csv": REPO / "tests/data/paper_tables/assumed_epochs.csv"}
    by_value, cells = assumptions.compare(config, STUDY, summaries, paper)
    rows = by_value.set_index(["key", "value"])
    assert rows.loc[("recipe.epochs", 1), "declared"] and rows.loc[("recipe.epochs", 2), "best"]
    assert rows.loc[("recipe.epochs", 2), "agree"] == rows.loc[("recipe.epochs", 1), "agree"] + 1
    assert rows.loc[("recipe.epochs", 2), "headline_mean_abs_delta"] == 0
    assert not rows.loc[("recipe.batch_size", 16), "best"] and not rows.loc[("recipe.batch_size", 32), "best"]
    assert list(cells[cells["key"] == "recipe.epochs"]["ours"]) == [1, 2]
    assert assumptions.summary_lines(by_value) == ["recipe.epochs = 2 agrees with 1 of 2 numbers, 1 (ours) with 0"]


def test_the_plan_shows_what_the_sweep_adds_per_study(in_repo):
    checked = startup.check(merged("presets/smoke.yaml"))
    cost = cli.sweep_cost(checked, rates.reference_cpu_rate(1))
    swept = startup.check(merged("presets/smoke.yaml", "presets/assumptions.yaml")).settings
    assert sum(count for count, _ in cost.values()) == len(swept) - len(checked.settings)
    assert cost[SEED0][0] == 9 and cost[SEED0][1] > 0 and "seed003_kmnist_fcnn_cnn" not in cost
    _, _, studies = cli.plan_tables(checked, "t4", 10)
    assert next(r for r in studies if r["study"] == SEED0)["sweep_runs"] == 9


# ------------------------------------------------------------------------------------------ the report answers


@pytest.mark.e2e
def test_a_sweep_runs_end_to_end_and_the_report_says_which_value_the_paper_supports(tmp_path):
    workdir = copy_workflow(tmp_path, keep_studies=())
    result = snakemake(workdir, "--cores", "2", "--configfile", "presets/smoke.yaml", FIXTURE)
    assert result.returncode == 0, result.stderr[-4000:]
    results = workdir / "results" / "smoke"
    by_value = pd.read_csv(results / "tables" / STUDY / "assumptions.csv")
    best = by_value[by_value["best"]]
    assert list(zip(best["key"], best["value"])) == [("recipe.epochs", 2)]  # what the made-up paper trained
    assert by_value[by_value["declared"]]["value"].tolist() == [1, 16]
    # The study's own table stays the declared runs' numbers.
    table = pd.read_csv(results / "tables" / "assumed_epochs.csv")
    assert table["epochs_ours"].tolist() == [1] and table["epochs_verdict"].tolist() == ["differ"]
    runs = pd.read_csv(results / "tables" / STUDY / "runs.csv")
    assert sorted(runs["assumption"].dropna()) == ["recipe.batch_size=32", "recipe.epochs=2"]
    # The 2-epoch run continued the 1-epoch one (chaining works for a sweep's runs).
    log = (results / "logs/train" / STUDY / "mnist/cnn/none/base__recipe.epochs-2/seed0.log").read_text()
    assert f"from {STUDY}/mnist/cnn/none/base/seed0 after epoch 1" in log
    html = (results / "report" / "index.html").read_text()
    assert "Unstated setting</a>: recipe.epochs = 2 agrees with 1 of 2 numbers, 1 (ours) with 0" in html
    page = (results / "report" / STUDY / "index.html").read_text()
    assert f'id="{STUDY}-assumptions"' in page and "the made-up report gives no epoch count" in page
    tex = (results / "report" / STUDY / "report.tex").read_text()
    assert "\\subsection*{Unstated settings}" in tex and "$\\star$" in tex
    assert (results / "report" / "figures" / STUDY / "assumptions.png").stat().st_size > 10_000
    cells = pd.read_csv(results / "tables" / STUDY / "assumptions_headline.csv")
    assert set(cells["headline"]) == {"epochs"} and set(cells["paper"]) == {2}
    assert json.loads((results / "runs" / STUDY / "mnist/cnn/none/base__recipe.epochs-2/seed0/metrics.json")
                      .read_text())["settings"]["assumption"]["value"] == 2
