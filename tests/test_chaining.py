"""Epoch grid chaining: a run that differs from a shorter one only in its epoch count continues from that run's
final state, and ends bit for bit where training it from scratch ends."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from cnnrepro import config as cfgmod
from cnnrepro.engine import chaining, checkpoint, train
from tests.test_train import VOLATILE, assert_same_weights, history_rows, make_settings, weights

pytestmark = pytest.mark.usefixtures("torch_globals_restored")

SEED004 = "seed004_squeezenet_transfer_cifar10"


def outputs(folder):
    return train.RunOutputs(folder / "weights.pt", folder / "history.csv", folder / "metrics.json",
                            folder / "checkpoint.pt", folder / "final_state.pt")


def comparable(record: dict) -> dict:
    """A record without what measures the machine and where the run started from."""
    return {k: v for k, v in record.items() if k not in (*VOLATILE, "continued_from")}


def renamed(settings: dict, epochs: int) -> dict:
    """``settings`` as the variant with ``epochs`` epochs of the same grid."""
    return {**settings, "run_id": f"{settings['run_id']}-e{epochs}", "variant": f"epochs-{epochs}",
            "grid": {"recipe.epochs": epochs}, "recipe": {**settings["recipe"], "epochs": epochs}}


# --------------------------------------------------------------------------- planning chains


def test_seed004_chains_50_150_300_for_each_freeze_level_and_batch_size(raw_config):
    config = cfgmod.validate(raw_config)
    settings = {run_id: s for run_id, s in cfgmod.settings_by_run(config).items() if run_id.startswith(SEED004)}
    sources = chaining.chain_sources(settings)
    assert len(settings) == 18 and len(sources) == 12
    for run_id, source in sources.items():
        this, that = settings[run_id], settings[source]
        assert (this["freeze"], this["recipe"]["batch_size"]) == (that["freeze"], that["recipe"]["batch_size"])
        assert (that["recipe"]["epochs"], this["recipe"]["epochs"]) in ((50, 150), (150, 300))
    # 300 epochs of training per (freeze level, batch size) instead of 50 + 150 + 300.
    trained = sum(s["recipe"]["epochs"] - (settings[sources[r]]["recipe"]["epochs"] if r in sources else 0)
                  for r, s in settings.items())
    assert trained == 6 * 300 and sum(s["recipe"]["epochs"] for s in settings.values()) == 6 * 500
    # The other studies have no epoch grid: nothing of theirs chains.
    assert all(run_id.startswith(SEED004) for run_id in chaining.chain_sources(cfgmod.settings_by_run(config)))


def test_runs_that_differ_in_more_than_the_epochs_or_have_the_same_length_do_not_chain():
    base = make_settings("fcnn", {"epochs": 2})
    longer = renamed(base, 4)
    assert chaining.chain_sources({"a": base, "b": longer}) == {"b": "a"}
    other_lr = {**longer, "recipe": {**longer["recipe"], "lr": 5e-3}}
    assert chaining.chain_sources({"a": base, "b": other_lr}) == {}
    same_length = {**renamed(base, 2), "run_id": "twin"}  # e.g. 150 and 300 both capped by limits.max_epochs
    assert chaining.chain_sources({"a": base, "b": same_length}) == {}
    with pytest.raises(ValueError, match="differ in more than the epoch count"):
        chaining.check_continues(other_lr, base)
    with pytest.raises(ValueError, match="it is not shorter"):
        chaining.check_continues(base, longer)


def test_chaining_can_be_turned_off_in_the_config(raw_config):
    config = cfgmod.validate({**raw_config, "chain_epoch_grids": False})
    assert config["chain_epoch_grids"] is False
    assert cfgmod.validate(raw_config)["chain_epoch_grids"] is True  # the schema's default


# --------------------------------------------------------------------------- bit for bit


@pytest.mark.parametrize("eval_every", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_a_chained_run_equals_training_from_scratch_bit_for_bit(eval_every, data_file, tmp_path, caplog):
    # cnn: dropout draws from the global RNG, the shuffling from the run's generator; both streams must continue.
    # Epochs 1 -> 3 -> 4: with eval_every 2, epochs 1 and 3 (each evaluated as a shorter run's last) are not
    # evaluated by the 4-epoch run.
    base = make_settings("cnn", {"epochs": 1, "eval_every": eval_every})
    short, middle, full = base, renamed(base, 3), renamed(base, 4)
    train.train_run(short, data_file, outputs(tmp_path / "short"), threads=1, keep_final_state=True)
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    middle_record = train.train_run(middle, data_file, outputs(tmp_path / "middle"), threads=1,
                                    chain=train.ChainStart(tmp_path / "short" / "final_state.pt", short),
                                    keep_final_state=True)
    chained = train.train_run(full, data_file, outputs(tmp_path / "full"), threads=1,
                              chain=train.ChainStart(tmp_path / "middle" / "final_state.pt", middle))
    assert f"continuing {middle['run_id']} from {short['run_id']} after epoch 1" in caplog.text
    assert f"continuing {full['run_id']} from {middle['run_id']} after epoch 3" in caplog.text
    assert middle_record["continued_from"] == {"run_id": short["run_id"], "epochs": 1}
    assert chained["continued_from"] == {"run_id": middle["run_id"], "epochs": 3}

    scratch = train.train_run(full, data_file, outputs(tmp_path / "scratch"), threads=1)
    assert scratch["continued_from"] is None
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "scratch"))
    assert history_rows(tmp_path / "full") == history_rows(tmp_path / "scratch")
    assert comparable(chained) == comparable(scratch)
    assert chained["train_seconds"] > middle_record["train_seconds"]  # includes the epochs it continued from
    evaluated = pd.read_csv(tmp_path / "full" / "history.csv")["eval_acc"].notna().tolist()
    assert evaluated == ([True] * 4 if eval_every == 1 else [False, True, False, True])
    # The first run's final state is its last checkpoint; the last run, which nothing continues, keeps none.
    assert not (tmp_path / "short" / "checkpoint.pt").exists()
    assert torch.load(tmp_path / "full" / "final_state.pt", weights_only=False)["kept"] is False


def test_a_missing_or_placeholder_final_state_means_training_from_scratch(data_file, tmp_path, caplog):
    short = make_settings("fcnn", {"epochs": 2})
    longer = renamed(short, 3)
    train.train_run(short, data_file, outputs(tmp_path / "short"), threads=1, keep_final_state=False)
    assert torch.load(tmp_path / "short" / "final_state.pt", weights_only=False) == {
        "version": checkpoint.VERSION, "kept": False, "reason": "no run continues from this one"}
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    record = train.train_run(longer, data_file, outputs(tmp_path / "longer"), threads=1,
                             chain=train.ChainStart(tmp_path / "short" / "final_state.pt", short))
    assert "not continuing from" in caplog.text and "no state was kept there" in caplog.text
    assert record["continued_from"] is None and record["epochs_run"] == 3
    scratch = train.train_run(longer, data_file, outputs(tmp_path / "scratch"), threads=1)
    assert comparable(record) == comparable(scratch)
    # A final state from other settings (here: another lr) is refused too.
    other = {**short, "recipe": {**short["recipe"], "lr": 5e-3}}
    train.train_run(other, data_file, outputs(tmp_path / "other"), threads=1, keep_final_state=True)
    caplog.clear()
    record = train.train_run(longer, data_file, outputs(tmp_path / "longer2"), threads=1,
                             chain=train.ChainStart(tmp_path / "other" / "final_state.pt", short))
    assert "written for other settings" in caplog.text and record["continued_from"] is None


def test_a_chained_run_killed_midway_resumes_from_its_own_checkpoint(data_file, tmp_path, monkeypatch, caplog):
    short = make_settings("fcnn", {"epochs": 2})
    longer = renamed(short, 5)
    train.train_run(short, data_file, outputs(tmp_path / "short"), threads=1, keep_final_state=True)
    chain = train.ChainStart(tmp_path / "short" / "final_state.pt", short)
    real, calls = train.train_one_epoch, []

    def dies_in_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epochs 3 and 4 of the longer run
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "train_one_epoch", dies_in_epoch_4)
        with pytest.raises(KeyboardInterrupt):
            train.train_run(longer, data_file, outputs(tmp_path / "longer"), threads=1, chain=chain)
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    resumed = train.train_run(longer, data_file, outputs(tmp_path / "longer"), threads=1, chain=chain)
    assert "from the checkpoint after epoch 3" in caplog.text and "continuing" not in caplog.text
    assert resumed["resumed"] is True and resumed["continued_from"] == {"run_id": short["run_id"], "epochs": 2}
    scratch = train.train_run(longer, data_file, outputs(tmp_path / "scratch"), threads=1)
    assert comparable(resumed) == comparable(scratch)
    assert_same_weights(weights(tmp_path / "longer"), weights(tmp_path / "scratch"))


def test_a_run_that_stopped_by_its_schedule_is_where_the_longer_one_stops_too(data_file, tmp_path, caplog):
    # keras_plateau with an impossible improvement threshold stops early (epoch 3), well before either cap.
    recipe = {"schedule": "keras_plateau", "max_epochs": 5, "monitor": "eval_loss", "stop_patience": 2,
              "stop_min_delta": 100.0}
    short = make_settings("fcnn", recipe)
    longer = {**short, "run_id": short["run_id"] + "-long", "recipe": {**short["recipe"], "max_epochs": 8}}
    first = train.train_run(short, data_file, outputs(tmp_path / "short"), threads=1, keep_final_state=True)
    assert first["stop_reason"] == "early_stopping" and first["epochs_run"] == 3
    caplog.set_level(logging.INFO, logger="cnnrepro.engine.train")
    record = train.train_run(longer, data_file, outputs(tmp_path / "longer"), threads=1,
                             chain=train.ChainStart(tmp_path / "short" / "final_state.pt", short))
    assert "which stopped by its schedule (early_stopping)" in caplog.text and "epoch 4/" not in caplog.text
    scratch = train.train_run(longer, data_file, outputs(tmp_path / "scratch"), threads=1)
    assert comparable(record) == comparable(scratch) and record["epochs_run"] == 3
    assert_same_weights(weights(tmp_path / "longer"), weights(tmp_path / "scratch"))


def test_a_schedule_that_depends_on_its_total_never_continues(monkeypatch):
    from cnnrepro.engine import schedules

    monkeypatch.setattr(schedules.ConstantSchedule, "continuable", False)
    base = make_settings("fcnn", {"epochs": 2})
    assert chaining.chain_sources({"a": base, "b": renamed(base, 4)}) == {}
    with pytest.raises(ValueError, match="depends on its total epochs"):
        schedules.make_schedule(base["recipe"]).continue_past_cap()


# --------------------------------------------------------------------------- through the real snakemake

CHAIN_STUDY = """
limits: {max_epochs: null}
studies:
  chain_grid:
    datasets: [mnist]
    models: [cnn]
    input: {normalization: mnist}
    recipe: {optimizer: adam, lr: 1.0e-3, batch_size: 32, loss: ce, schedule: constant, epochs: 1}
    grid: {recipe.epochs: [1, 2, 3]}
    benchmark: false
"""


@pytest.mark.e2e
def test_the_workflow_chains_the_epoch_grid_to_the_from_scratch_results(tmp_path):
    from tests.test_e2e import copy_workflow, snakemake

    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf", keep_studies=())  # chain.yaml's study alone
    (workdir / "chain.yaml").write_text(CHAIN_STUDY)
    run = "chain_grid/mnist/cnn/none/epochs-{}/seed0"
    outputs = {}
    for chained in (True, False):
        results = f"results/chain_{chained}"
        targets = [f"{results}/runs/{run.format(n)}/metrics.json" for n in (1, 2, 3)]
        done = snakemake(workdir, *targets, "--cores", "1", "--configfile", "presets/smoke.yaml", "chain.yaml",
                         "--config", f"results={results}", f"chain_epoch_grids={chained}")
        assert done.returncode == 0, done.stderr[-4000:]
        outputs[chained] = workdir / results
    chained, scratch = outputs[True], outputs[False]
    log = (chained / "logs" / "train" / f"{run.format(3)}.log").read_text()
    assert f"continuing {run.format(3)} from {run.format(2)} after epoch 2" in log and "epoch 1/3" not in log
    assert "continuing" not in (scratch / "logs" / "train" / f"{run.format(3)}.log").read_text()
    for n in (1, 2, 3):
        folder = f"runs/{run.format(n)}"
        assert_same_weights(weights(chained / folder), weights(scratch / folder))
        assert history_rows(chained / folder) == history_rows(scratch / folder)
    # Only the runs that another continues keep a state; the placeholders say why.
    kept = {n: torch.load(chained / f"runs/{run.format(n)}/final_state.pt", weights_only=False).get("kept", True)
            for n in (1, 2, 3)}
    assert kept == {1: True, 2: True, 3: False}
    assert not torch.load(scratch / f"runs/{run.format(1)}/final_state.pt", weights_only=False)["kept"]
