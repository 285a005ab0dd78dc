"""The schedules replayed against the authors' own runs (issue "Faithful by default", item 8).

Each schedule is built exactly as the workflow builds it: the study's recipe from ``config.yaml``, checked
by ``cfg.check_recipe`` (which fills the schema's defaults), then ``make_schedule``.  Nothing here restates
a patience, threshold or factor of the project: a wrong value in ``config.yaml`` or in the schema's
defaults makes these tests fail (the ``*_catches_*`` tests below show that they can).

Seed 003: the five Keras histories the authors published (``authors/``, see its README) are
replayed epoch by epoch; the schedule must stop exactly where the authors' runs stopped, by early stopping,
and give every epoch the learning rate the history records.

Seed 002: a faithful transcription of the lr-drop rule in the authors' ``main.py`` and the project's
schedule are fed the same scripted train-loss sequence; lrs, drop epochs and stop epoch must agree.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from cnnrepro import config as cfg
from cnnrepro.engine.schedules import make_schedule

REPO = Path(__file__).resolve().parents[1]
HISTORIES = REPO / "authors" / "seed003_kmnist_histories.json"

SEED002 = "seed002_squeezenet_dsc"
SEED003 = "seed003_kmnist_fcnn_cnn"


def study_recipe(study: str) -> dict:
    """The study's recipe exactly as written in config.yaml (not yet checked)."""
    return copy.deepcopy(cfg.load_yaml(REPO / "config.yaml")["studies"][study]["recipe"])


def schedule_for(recipe: dict, schema: dict | None = None):
    """What the workflow does with a recipe: check it (filling the schema's defaults), build the schedule."""
    return make_schedule(cfg.check_recipe(recipe, "recipe", schema))


def schema_with_default(schedule: str, key: str, value) -> dict:
    """A copy of the config schema whose ``schedule`` branch gives ``key`` the default ``value``."""
    schema = copy.deepcopy(cfg.load_schema())
    for branch in schema["definitions"]["recipe"]["allOf"]:
        if branch["if"]["properties"].get("schedule", {}).get("const") == schedule:
            branch["then"]["properties"][key]["default"] = value
            return schema
    raise AssertionError(f"no schema branch for schedule {schedule!r}")


def same_lr(a: float, b: float) -> bool:
    # Keras keeps the lr in a float32 variable (1e-3 is logged as 0.0010000000474974513); the schedule
    # multiplies Python floats. float32 has a relative precision of ~6e-8, so 1e-6 leaves room for the
    # few float32 roundings of the repeated * 0.1 and none for a wrong value.
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)


# =========================================================================== seed 003

# The published histories hold a `learning_rate` per epoch. Which epoch's lr is that? Keras 3's
# ReduceLROnPlateau.on_epoch_end starts with
#     logs["learning_rate"] = float(backend.convert_to_numpy(self.model.optimizer.learning_rate))
# and only then decides whether to reduce, and the History callback records those logs. So the value logged
# at epoch e is the lr that trained epoch e (before any reduction made at the end of e). The data agree:
# the first entry is the initial lr 1e-3, and with the convention "history lr at e == lr in force during e"
# every transition of all five runs matches, while "history lr at e == lr after the decision at e" is off by
# one epoch at each reduction (test_seed003_history_lr_is_the_lr_that_trained_the_epoch checks both).
# Hence: epoch 1 trains at schedule.initial_lr, epoch e > 1 at the decision.lr returned after epoch e-1.

# The table: the last lr each run trained with (CNN, CNN aug, CNN no-pool, FCNN, FCNN aug).
FINAL_TRAINED_LR = {"cnn": 1e-6, "cnn_aug": 1e-5, "cnn_without_polling": 1e-5, "fcnn": 1e-6, "fcnn_aug": 1e-9}
STOP_EPOCH = {"cnn": 596, "cnn_aug": 334, "cnn_without_polling": 535, "fcnn": 1154, "fcnn_aug": 507}


def load_histories() -> dict:
    return json.loads(HISTORIES.read_text(encoding="utf-8"))["experiments"]


HISTORY = load_histories()


def replay_seed003(schedule, val_losses):
    """Feed val_loss epoch by epoch until the schedule stops. Returns (lr that trained each epoch,
    decisions); raises if the history ends before the schedule stops."""
    trained, decisions = [], []
    lr = schedule.initial_lr
    for epoch, val_loss in enumerate(val_losses, 1):
        trained.append(lr)  # the lr this epoch was trained with
        decision = schedule.end_epoch(epoch, {"eval_loss": val_loss})
        decisions.append(decision)
        lr = decision.lr  # the lr for the next epoch
        if decision.stop:
            break
    return trained, decisions


def seed003_disagreements(recipe: dict, schema: dict | None = None) -> dict[str, str]:
    """{experiment: what differs} for every history the schedule built from ``recipe`` does not reproduce."""
    out = {}
    for name, hist in HISTORY.items():
        trained, decisions = replay_seed003(schedule_for(recipe, schema), hist["val_loss"])
        last = decisions[-1]
        if not last.stop or len(decisions) != hist["epochs"] or last.reason != "early_stopping":
            out[name] = f"stops after epoch {len(decisions)} ({last.reason}), authors after {hist['epochs']}"
            continue
        wrong = [e for e, (ours, theirs) in enumerate(zip(trained, hist["learning_rate"]), 1)
                 if not same_lr(ours, theirs)]
        if wrong:
            out[name] = f"lr differs at epochs {wrong[:5]}"
    return out


def test_seed003_histories_are_the_published_runs():
    assert sorted(HISTORY) == sorted(STOP_EPOCH)
    for name, hist in HISTORY.items():
        assert hist["epochs"] == STOP_EPOCH[name]
        assert len(hist["val_loss"]) == len(hist["learning_rate"]) == hist["epochs"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in hist["val_loss"])
        # the table of final learning rates is the last lr of each history
        assert same_lr(hist["learning_rate"][-1], FINAL_TRAINED_LR[name]), name
        # EarlyStopping(patience=10): the best val_loss is 10 epochs before the end
        best = hist["val_loss"].index(min(hist["val_loss"])) + 1
        assert best == hist["epochs"] - 10, name


def test_seed003_histories_hold_every_series_the_figure_compares_as_keras_logged_them():
    import numpy as np

    for name, hist in HISTORY.items():
        for series in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            values = hist[series]
            assert len(values) == hist["epochs"], (name, series)
            # Keras logs float32 metrics: a digit mistyped in transcription would almost never be a float32 value.
            assert all(float(np.float32(v)) == v for v in values), (name, series)
        assert all(0 <= v <= 1 for v in hist["accuracy"] + hist["val_accuracy"]), name
        assert all(v > 0 for v in hist["loss"]), name
        # training converges: the last epochs fit the training set better than the first
        assert hist["loss"][-1] < hist["loss"][0] and hist["accuracy"][-1] > hist["accuracy"][0], name


@pytest.mark.parametrize("name", sorted(STOP_EPOCH))
def test_seed003_replay_stops_at_authors_epoch_with_their_lrs(name):
    hist = HISTORY[name]
    schedule = schedule_for(study_recipe(SEED003))
    trained, decisions = replay_seed003(schedule, hist["val_loss"])

    assert len(decisions) == STOP_EPOCH[name], f"stopped after epoch {len(decisions)}"
    assert decisions[-1].stop and decisions[-1].reason == "early_stopping"
    assert not any(d.stop for d in decisions[:-1])

    assert trained[0] == schedule.initial_lr
    mismatches = [(e, ours, theirs) for e, (ours, theirs) in enumerate(zip(trained, hist["learning_rate"]), 1)
                  if not same_lr(ours, theirs)]
    assert mismatches == [], f"{len(mismatches)} epochs differ, first: {mismatches[:3]}"
    assert same_lr(trained[-1], FINAL_TRAINED_LR[name])

    # the schedule's "best" epoch is EarlyStopping's: the first epoch with the lowest val_loss
    assert schedule.best_epoch == hist["val_loss"].index(min(hist["val_loss"])) + 1


def test_seed003_history_lr_is_the_lr_that_trained_the_epoch():
    """The convention above, decided by the data: 'lr after epoch e' disagrees at every reduction."""
    for name, hist in HISTORY.items():
        trained, decisions = replay_seed003(schedule_for(study_recipe(SEED003)), hist["val_loss"])
        after = [d.lr for d in decisions]
        drops = sum(1 for a, b in zip(hist["learning_rate"], hist["learning_rate"][1:]) if not same_lr(a, b))
        assert drops >= 2, name
        off = [e for e, (ours, theirs) in enumerate(zip(after, hist["learning_rate"]), 1) if not same_lr(ours, theirs)]
        assert len(off) >= drops, name


def test_seed003_config_reproduces_all_five_runs():
    assert seed003_disagreements(study_recipe(SEED003)) == {}


@pytest.mark.parametrize("key,value", [
    ("reduce_patience", 4), ("reduce_patience", 6),
    ("stop_patience", 9), ("stop_patience", 11),
    ("reduce_factor", 0.2), ("reduce_factor", 0.5),
    ("reduce_min_delta", 0.0), ("reduce_min_delta", 1e-3),
    ("stop_min_delta", 1e-4),
    ("cooldown", 2), ("min_lr", 1e-8),
])
def test_seed003_replay_catches_a_wrong_config_value(key, value):
    recipe = study_recipe(SEED003)
    recipe[key] = value
    assert seed003_disagreements(recipe), f"{key}={value} still reproduces every history"


@pytest.mark.parametrize("key,value", [("cooldown", 2), ("min_lr", 1e-8), ("reduce_patience", 6)])
def test_seed003_replay_catches_a_wrong_schema_default(key, value):
    # config.yaml leaves cooldown and min_lr to the schema; a wrong default there must show too.
    # (cooldown 1 cannot show: Keras decrements the counter before re-checking it, so a cooldown of 1
    # only resets `wait`, which the reduction already did; it is indistinguishable from 0 in any run.)
    recipe = study_recipe(SEED003)
    recipe.pop(key, None)
    schema = schema_with_default("keras_plateau", key, value)
    assert seed003_disagreements(recipe, schema), f"schema default {key}={value} still reproduces every history"


# =========================================================================== seed 002

# The authors' rule, ags5/DL2017.2 main.py (commit 023d77239f4e7ef28495524f2bedde2439f4f18c; the loop is
# the same at commit 0fa4e8924e637a9c3e2b102c9b3deb42fba4ef5b), quoted:
#
#     loss = 0
#     delta = 0
#     drop = 0
#     ...
#         for epoch in range(200 - start_epoch):
#             oldloss = loss
#             loss = train(epoch)
#             ...
#             test(epoch)
#             lr = optimizer.param_groups[0]['lr']
#             if (oldloss-loss < 0.01)and(epoch!=0):
#                 delta = delta+1
#                 if delta==10:
#                     optimizer.param_groups[0]['lr'] = lr*0.1
#                     drop = drop + 1
#                     delta = 0
#             else: delta = 0
#             if drop == 4:
#                 print('The end')
#                 print(lr, delta, drop, epoch)
#                 fileloss.close()
#                 break
#
# (`train(epoch)` returns the epoch's mean batch loss; `--lr` defaults to 0.01; start_epoch is 0.)


def authors_seed002(train_losses, lr=0.01):
    """The loop above with train() replaced by the scripted losses. Returns (lr that trained each epoch,
    1-based drop epochs, 1-based stop epoch or None if the losses ran out first)."""
    trained, drops = [], []
    loss = 0
    delta = 0
    drop = 0
    for epoch in range(200 - 0):
        if epoch >= len(train_losses):
            return trained, drops, None
        trained.append(lr)  # optimizer.param_groups[0]['lr'] during train(epoch)
        oldloss = loss
        loss = train_losses[epoch]
        if (oldloss - loss < 0.01) and (epoch != 0):
            delta = delta + 1
            if delta == 10:
                lr = lr * 0.1
                drop = drop + 1
                delta = 0
                drops.append(epoch + 1)
        else:
            delta = 0
        if drop == 4:
            return trained, drops, epoch + 1
    return trained, drops, 200


# A scripted epoch train loss (deterministic): improvements, flat stretches, rises and small noise, a stall
# counter reset at 7, drops of 0.015 / 0.012 (just over the threshold), of 0.0085 / 0.009 (just under it),
# and 2.01 -> 2.0 (epoch 16), whose float difference 0.009999999999999787 is "stalled" in both codes.
SEED002_LOSSES = [
    2.30,                                                                     # 1: never stalled
    2.20, 2.10, 2.05,                                                         # 2-4: improvements
    2.045, 2.06, 2.06, 2.052, 2.07, 2.065, 2.0649,                            # 5-11: 7 stalled
    2.00,                                                                     # 12: reset
    1.995, 1.99, 2.01, 2.0, 1.993, 1.993, 1.99, 2.02, 2.015, 2.011,           # 13-22: 10 stalled -> drop
    1.996, 1.981, 1.966, 1.951,                                               # 23-26: -0.015 each
    1.95, 1.9425, 1.9425, 1.96, 1.955, 1.948, 1.9395, 1.931, 1.9225, 1.914,   # 27-36: 10 stalled -> drop
    1.9141, 1.9139, 1.93, 1.925, 1.92, 1.9155, 1.9112, 1.9111, 1.9110, 1.9105,  # 37-46: 10 -> drop
    1.70,                                                                     # 47: improvement
    1.688,                                                                    # 48: -0.012
    1.6805, 1.6805, 1.69, 1.685, 1.676, 1.6671, 1.6671, 1.70, 1.695, 1.6949,  # 49-58: 10 -> 4th drop, stop
    1.50, 1.40,                                                               # 59-60: never trained
]
SEED002_DROP_EPOCHS = [22, 36, 46, 58]
SEED002_STOP_EPOCH = 58


def replay_seed002(schedule, train_losses):
    """(lr that trained each epoch, 1-based drop epochs, 1-based stop epoch or None, last decision)."""
    trained, drops = [], []
    lr = schedule.initial_lr
    decision = None
    for epoch, loss in enumerate(train_losses, 1):
        trained.append(lr)
        decision = schedule.end_epoch(epoch, {"train_loss": loss})
        if decision.lr != lr:
            drops.append(epoch)
        lr = decision.lr
        if decision.stop:
            return trained, drops, epoch, decision
    return trained, drops, None, decision


def seed002_agrees(recipe: dict, schema: dict | None = None) -> bool:
    ours, our_drops, our_stop, _ = replay_seed002(schedule_for(recipe, schema), SEED002_LOSSES)
    theirs, their_drops, their_stop = authors_seed002(SEED002_LOSSES)
    return (our_drops == their_drops and our_stop == their_stop and len(ours) == len(theirs)
            and all(same_lr(a, b) for a, b in zip(ours, theirs)))


def test_seed002_transcription_on_the_script():
    trained, drops, stop = authors_seed002(SEED002_LOSSES)
    assert len(SEED002_LOSSES) == 60
    assert drops == SEED002_DROP_EPOCHS and stop == SEED002_STOP_EPOCH
    assert trained == [0.01] * 22 + [0.01 * 0.1] * 14 + [0.01 * 0.1 * 0.1] * 10 + [0.01 * 0.1 * 0.1 * 0.1] * 12


def test_seed002_schedule_matches_authors_code():
    schedule = schedule_for(study_recipe(SEED002))
    ours, our_drops, our_stop, last = replay_seed002(schedule, SEED002_LOSSES)
    theirs, their_drops, their_stop = authors_seed002(SEED002_LOSSES)

    assert our_drops == their_drops == SEED002_DROP_EPOCHS
    assert our_stop == their_stop == SEED002_STOP_EPOCH
    assert last.stop and last.reason == "max_drops"
    assert len(ours) == len(theirs) == SEED002_STOP_EPOCH
    # the same multiplications in the same order: equal floats, not just close ones
    assert ours == theirs
    assert schedule.drops == 4


@pytest.mark.parametrize("key,value", [
    ("patience", 9), ("patience", 11),
    ("threshold", 0.005), ("threshold", 0.02),
    ("factor", 0.5), ("factor", 0.01),
    ("max_drops", 3), ("max_drops", 5),
    ("max_epochs", 50),
])
def test_seed002_replay_catches_a_wrong_config_value(key, value):
    recipe = study_recipe(SEED002)
    recipe[key] = value
    assert not seed002_agrees(recipe), f"{key}={value} still matches the authors' code"


@pytest.mark.parametrize("key,value", [("patience", 9), ("threshold", 0.005), ("factor", 0.5)])
def test_seed002_replay_catches_a_wrong_schema_default(key, value):
    recipe = study_recipe(SEED002)
    recipe.pop(key)
    assert seed002_agrees(recipe)  # the schema's own default is the authors' value
    assert not seed002_agrees(recipe, schema_with_default("plateau_drop", key, value))
