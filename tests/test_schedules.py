"""Scripted-metric tests for cnnrepro.engine.schedules."""

from __future__ import annotations

import json
import math

import pytest

from cnnrepro import config as cfg
from cnnrepro.engine.schedules import (
    ConstantSchedule,
    EpochDecision,
    KerasPlateauSchedule,
    PlateauDropSchedule,
    Schedule,
    make_schedule,
)


def recipe(schedule: str, **keys) -> dict:
    """A recipe as the config resolves it: checked, with the schema's defaults (the authors' values) filled."""
    return cfg.check_recipe({"schedule": schedule, "batch_size": 1, **keys}, "r")


def seed002(lr: float, **keys) -> PlateauDropSchedule:
    return make_schedule(recipe("plateau_drop", lr=lr, **keys))


def run(schedule: Schedule, losses, key="train_loss", accs=None, start=1):
    """Feed losses (and optional accs) until the schedule stops or input ends."""
    out = []
    for i, loss in enumerate(losses):
        logs = {key: loss}
        if accs is not None:
            logs["eval_acc"] = accs[i]
        d = schedule.end_epoch(start + i, logs)
        out.append(d)
        if d.stop:
            break
    return out


def drop_epochs(decisions, initial_lr):
    """1-based epochs after which the lr changed."""
    epochs, lr = [], initial_lr
    for e, d in enumerate(decisions, 1):
        if d.lr != lr:
            epochs.append(e)
            lr = d.lr
    return epochs


def trained_lrs(decisions, initial_lr):
    """lr used to train each epoch (epoch 1 uses initial_lr)."""
    return [initial_lr] + [d.lr for d in decisions[:-1]]


# --------------------------------------------------------------------------- constant


def test_constant_stops_exactly_at_epochs():
    s = ConstantSchedule(1e-4, 30)
    ds = run(s, [2.0] * 100)
    assert len(ds) == 30
    assert all(not d.stop for d in ds[:-1])
    assert ds[-1].stop and ds[-1].reason == "max_epochs"
    assert all(d.lr == 1e-4 for d in ds)


def test_constant_best_is_highest_eval_acc_strict():
    s = ConstantSchedule(1e-3, 6)
    ds = run(s, [1.0] * 6, accs=[0.5, 0.6, 0.6, 0.4, 0.7, 0.7])
    assert [d.best for d in ds] == [True, True, False, False, True, False]
    assert s.best_epoch == 5 and s.best_value == 0.7


def test_constant_best_false_without_eval_acc():
    s = ConstantSchedule(1e-3, 2)
    assert s.end_epoch(1, {"train_loss": 1.0}).best is False


# --------------------------------------------------------------------------- seed 002


def test_plateau_drop_decreasing_by_002_never_drops():
    s = seed002(0.01)
    losses = [5.0 - 0.02 * k for k in range(300)]
    ds = run(s, losses)
    assert len(ds) == 200
    assert drop_epochs(ds, 0.01) == []
    assert all(d.lr == 0.01 for d in ds)
    assert ds[-1].stop and ds[-1].reason == "max_epochs"
    assert s.drops == 0


def test_plateau_drop_flat_loss_epochs_and_lrs():
    s = seed002(0.01)
    ds = run(s, [1.0] * 300)
    # epoch 1 has no previous loss; epochs 2..11 are the 10 stalled epochs
    assert drop_epochs(ds, 0.01) == [11, 21, 31, 41]
    assert len(ds) == 41
    assert ds[-1].stop and ds[-1].reason == "max_drops"
    assert all(not d.stop for d in ds[:-1])
    lrs = trained_lrs(ds, 0.01)
    assert lrs[0:11] == pytest.approx([1e-2] * 11)
    assert lrs[11:21] == pytest.approx([1e-3] * 10)
    assert lrs[21:31] == pytest.approx([1e-4] * 10)
    assert lrs[31:41] == pytest.approx([1e-5] * 10)
    assert sorted(set(round(math.log10(x)) for x in lrs)) == [-5, -4, -3, -2]
    # 1e-6 is set by the 4th drop but never trained
    assert ds[-1].lr == pytest.approx(1e-6)
    assert s.drops == 4


def test_plateau_drop_increase_counts_as_stalled():
    s = seed002(0.01)
    ds = run(s, [1.0 + 0.5 * k for k in range(100)])
    assert drop_epochs(ds, 0.01) == [11, 21, 31, 41]
    assert ds[-1].reason == "max_drops"


def test_plateau_drop_counter_resets_on_improvement():
    s = seed002(0.01)
    # epochs 1-10 flat (9 stalls: epochs 2..10), epoch 11 improves by 0.5 -> reset
    losses = [1.0] * 10 + [0.5] * 100
    ds = run(s, losses)
    assert drop_epochs(ds, 0.01)[0] == 21  # 10 new stalls: epochs 12..21
    assert ds[9].lr == 0.01 and s.drops >= 1


def test_plateau_drop_improvement_equal_to_threshold_is_not_stalled():
    # 0.25 and these losses are exact in binary: 1.0 - 0.75 == 0.25 is not < 0.25
    s = seed002(1.0, threshold=0.25, patience=2, max_drops=1)
    ds = run(s, [1.0, 0.75, 0.5, 0.25, 0.25, 0.25])
    assert [s_.lr for s_ in ds] == [1.0, 1.0, 1.0, 1.0, 1.0, pytest.approx(0.1)]
    assert ds[-1].stop and ds[-1].reason == "max_drops" and len(ds) == 6
    # a decrease smaller than the threshold is stalled
    s = seed002(1.0, threshold=0.25, patience=2, max_drops=1)
    ds = run(s, [1.0, 0.875, 0.75])
    assert ds[-1].stop and ds[-1].lr == pytest.approx(0.1)


def test_plateau_drop_200_epoch_cap_with_recurring_resets():
    s = seed002(0.01)
    # 9 stalls then a big improvement, repeated: never 10 in a row
    losses, v = [], 1000.0
    for k in range(400):
        if k % 10 == 0:
            v -= 1.0
        losses.append(v)
    ds = run(s, losses)
    assert len(ds) == 200 and ds[-1].reason == "max_epochs"
    assert s.drops == 0 and ds[-1].lr == 0.01


def test_plateau_drop_stop_at_max_drops_precedes_max_epochs():
    s = seed002(0.01, max_epochs=41)
    ds = run(s, [1.0] * 50)
    assert len(ds) == 41 and ds[-1].reason == "max_drops"


def test_plateau_drop_best_is_highest_eval_acc():
    s = seed002(0.01)
    ds = run(s, [1.0] * 5, accs=[10.0, 30.0, 20.0, 30.0, 31.0])
    assert [d.best for d in ds] == [True, True, False, False, True]
    assert s.best_epoch == 5


def test_plateau_drop_monitor_key():
    s = seed002(0.01, monitor="eval_loss", patience=1, max_drops=1)
    with pytest.raises(KeyError):
        s.end_epoch(1, {"train_loss": 1.0})
    s = seed002(0.01, monitor="eval_loss", patience=1, max_drops=1)
    ds = run(s, [1.0, 1.0], key="eval_loss")
    assert ds[-1].stop and ds[-1].reason == "max_drops"


# --------------------------------------------------------------------------- seed 003


def keras(**kw):
    kw.setdefault("lr", 1e-3)
    return make_schedule(recipe("keras_plateau", **kw))


def test_keras_flat_reduce_at_6_and_11_stop_at_11():
    s = keras()
    ds = run(s, [1.0] * 100, key="eval_loss")
    # epoch 1 improves on +inf; RL wait 1..5 at epochs 2..6 -> reduce at 6;
    # wait 1..5 at epochs 7..11 -> reduce at 11; ES wait 10 at epoch 11 -> stop.
    assert drop_epochs(ds, 1e-3) == [6, 11]
    assert len(ds) == 11
    assert ds[-1].stop and ds[-1].reason == "early_stopping"
    # the reduction made at the stopping epoch is reported
    assert ds[-1].lr == pytest.approx(1e-5)
    assert [d.best for d in ds] == [True] + [False] * 10


def test_keras_stops_10_epochs_after_best():
    s = keras()
    losses = [5.0, 4.0, 3.0] + [3.5] * 50
    ds = run(s, losses, key="eval_loss")
    assert len(ds) == 13 and ds[-1].reason == "early_stopping"
    assert [d.best for d in ds][:4] == [True, True, True, False]
    assert s.best_epoch == 3 and s.best_value == 3.0
    assert drop_epochs(ds, 1e-3) == [8, 13]


def test_keras_equal_value_is_not_an_improvement():
    s = keras()
    ds = run(s, [2.0, 1.0] + [1.0] * 20, key="eval_loss")
    assert [d.best for d in ds][:3] == [True, True, False]
    assert len(ds) == 12  # best at 2, stop at 2 + 10


def test_keras_small_improvement_resets_stop_but_not_reduce():
    s = keras()
    # 0.99999 beats 1.0 (ES min_delta 0) but not 1.0 - 1e-4 (RL min_delta)
    losses = [1.0, 1.0, 1.0, 0.99999, 1.0, 1.0] + [1.0] * 20
    ds = run(s, losses, key="eval_loss")
    assert [d.best for d in ds][:6] == [True, False, False, True, False, False]
    assert drop_epochs(ds, 1e-3)[0] == 6  # RL wait 1,2,3,4,5 at epochs 2..6
    assert len(ds) == 14  # ES: best at 4, stop at 14
    assert ds[-1].reason == "early_stopping"
    assert s.best_value == 0.99999


def test_keras_sub_min_delta_improvements_every_epoch():
    s = keras()
    losses = [1.0 - k * 1.2e-5 for k in range(40)]  # epoch = k + 1
    ds = run(s, losses, key="eval_loss")
    assert all(d.best for d in ds)  # ES improves every epoch: never stops
    assert not any(d.stop for d in ds)
    # RL: waits 1..5 at epochs 2..6 -> reduce at 6; waits 1..3 at 7..9; epoch 10
    # (k=9, 0.999892 < 0.9999) improves; reduce at 15; epoch 19 (k=18) improves;
    # reduce at 24.  No value is within rounding distance of a threshold.
    assert drop_epochs(ds, 1e-3) == [6, 15, 24, 33]


def test_keras_improvement_larger_than_min_delta_resets_reduce():
    s = keras()
    losses = [1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    ds = run(s, losses, key="eval_loss")
    assert drop_epochs(ds, 1e-3) == [10]  # waits 1..3, reset at 5, 1..5 at 6..10


def test_keras_cooldown():
    s = keras(reduce_patience=2, cooldown=2, stop_patience=100)
    ds = run(s, [1.0] * 12, key="eval_loss")
    # reduce at 3; epoch 4: counter 2->1 (in cooldown); epoch 5: counter 1->0,
    # not in cooldown any more so wait=1; epoch 6: wait 2 -> reduce; ...
    assert drop_epochs(ds, 1e-3) == [3, 6, 9, 12]
    s = keras(reduce_patience=2, cooldown=0, stop_patience=100)
    ds = run(s, [1.0] * 12, key="eval_loss")
    assert drop_epochs(ds, 1e-3) == [3, 5, 7, 9, 11]


def test_keras_improvement_during_cooldown_updates_best():
    s = keras(reduce_patience=2, cooldown=3, stop_patience=100)
    losses = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    ds = run(s, losses, key="eval_loss")
    # reduce at 3 (counter 3); 4: counter 2, improves (best 0.5); 5: counter 1;
    # 6: counter 0, wait 1; 7: wait 2 -> reduce (counter 3); 8: 2; 9: 1
    assert drop_epochs(ds, 1e-3) == [3, 7]
    assert s.reduce_best == 0.5


def test_keras_min_lr_floor():
    s = keras(lr=1.0, reduce_factor=0.5, reduce_patience=1, min_lr=0.3, stop_patience=100)
    ds = run(s, [1.0] * 6, key="eval_loss")
    assert [d.lr for d in ds] == [1.0, 0.5, 0.3, 0.3, 0.3, 0.3]
    # at the floor no reduction happens, so wait is not reset
    assert s.reduce_wait == 3


def test_keras_max_epochs():
    s = keras(max_epochs=3)
    ds = run(s, [3.0, 2.0, 1.0, 0.5], key="eval_loss")
    assert len(ds) == 3 and ds[-1].reason == "max_epochs"


def test_keras_first_epoch_never_stops():
    s = keras(stop_patience=0)  # Keras: `epoch > 0` guard
    d = s.end_epoch(1, {"eval_loss": float("nan")})
    assert not d.stop and not d.best
    d = s.end_epoch(2, {"eval_loss": 1.0})
    assert not d.stop and d.best
    d = s.end_epoch(3, {"eval_loss": 1.0})
    assert d.stop


def test_keras_missing_monitor_raises():
    with pytest.raises(KeyError):
        keras().end_epoch(1, {"train_loss": 1.0})


def test_keras_rejects_factor_ge_1():
    with pytest.raises(ValueError):
        keras(reduce_factor=1.0)


# --------------------------------------------------------------------------- protocol


def test_epoch_decision_fields():
    d = EpochDecision(lr=0.1, stop=False)
    assert d.reason is None and d.best is False


def test_epochs_must_be_consecutive_and_not_after_stop():
    s = ConstantSchedule(0.1, 2)
    with pytest.raises(ValueError):
        s.end_epoch(2, {})
    s.end_epoch(1, {})
    with pytest.raises(ValueError):
        s.end_epoch(1, {})
    assert s.end_epoch(2, {}).stop
    with pytest.raises(RuntimeError):
        s.end_epoch(3, {})


def test_describe_and_the_authors_defaults_held_by_the_schema():
    s = make_schedule(recipe("plateau_drop", lr=0.01, optimizer="adam"))
    assert s.describe() == {
        "schedule": "plateau_drop",
        "lr": 0.01,
        "max_epochs": 200,
        "monitor": "train_loss",
        "threshold": 0.01,
        "patience": 10,
        "factor": 0.1,
        "max_drops": 4,
    }
    k = keras().describe()
    assert k["reduce_patience"] == 5 and k["stop_patience"] == 10
    assert k["reduce_min_delta"] == 1e-4 and k["stop_min_delta"] == 0.0
    assert k["monitor"] == "eval_loss" and k["max_epochs"] == 10000
    json.dumps(k, allow_nan=False)


# --------------------------------------------------------------------------- resume


RESUME_CASES = [
    (lambda: ConstantSchedule(0.1, 12), "train_loss", [1.0] * 12, [3, 7]),
    (
        lambda: seed002(0.01),
        "train_loss",
        [1.0] * 15 + [0.5] + [0.5 + 0.001 * k for k in range(60)],
        [1, 5, 11, 16, 25],
    ),
    (
        lambda: keras(reduce_patience=2, cooldown=2, stop_patience=7),
        "eval_loss",
        [1.0, 0.9, 0.9, 0.9, 0.89999, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],
        [1, 3, 4, 5, 8, 12],
    ),
]


@pytest.mark.parametrize("factory,key,losses,cut_points", RESUME_CASES)
def test_resume_matches_uninterrupted(factory, key, losses, cut_points):
    accs = [float((7 * i) % 11) for i in range(len(losses))]
    full = run(factory(), losses, key=key, accs=accs)
    assert full[-1].stop
    for n in cut_points:
        a = factory()
        first = run(a, losses[:n], key=key, accs=accs[:n])
        state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
        b = factory()
        b.load_state_dict(state)
        assert b.lr == a.lr
        rest = run(b, losses[n:], key=key, accs=accs[n:], start=n + 1)
        assert first + rest == full, f"cut at {n}"
        assert b.state_dict() == run_state(factory, losses, key, accs)


def run_state(factory, losses, key, accs):
    s = factory()
    run(s, losses, key=key, accs=accs)
    return s.state_dict()


# --------------------------------------------------------------------------- continuing past the cap (chaining)

# (schedule with an epoch cap, key, losses): none stops by its own rule within the losses given.
CHAIN_CASES = [
    (lambda cap: ConstantSchedule(0.1, cap), "train_loss", [1.0] * 12),
    (lambda cap: seed002(0.01, max_epochs=cap, patience=3), "train_loss", [1.0] * 12),  # drops at 4 and 7
    (lambda cap: keras(max_epochs=cap, reduce_patience=2, stop_patience=100), "eval_loss",
     [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7]),
]


@pytest.mark.parametrize("factory,key,losses", CHAIN_CASES)
@pytest.mark.parametrize("short", [1, 4, 7])
def test_a_longer_run_continues_a_shorter_one_exactly(factory, key, losses, short):
    accs = [float((7 * i) % 11) for i in range(len(losses))]
    full = run(factory(len(losses)), losses, key=key, accs=accs)
    assert full[-1].stop and full[-1].reason == "max_epochs" and len(full) == len(losses)
    first = factory(short)
    head = run(first, losses[:short], key=key, accs=accs[:short])
    assert head[-1].stop and head[-1].reason == "max_epochs"
    longer = factory(len(losses))
    longer.load_state_dict(json.loads(json.dumps(first.state_dict())))
    longer.continue_past_cap()
    rest = run(longer, losses[short:], key=key, accs=accs[short:], start=short + 1)
    # Every decision before the shorter cap, and every one after it, as in the uninterrupted longer run; the
    # shorter run's last decision differs only in its stop.
    assert [d.lr for d in head] == [d.lr for d in full[:short]] and head[:-1] == full[:short - 1]
    assert rest == full[short:] and longer.state_dict() == run_state(lambda: factory(len(losses)), losses, key, accs)
    assert type(first).continuable


def test_which_schedules_read_the_evaluation_of_every_epoch():
    assert not ConstantSchedule(0.1, 3).reads_eval_metrics
    assert not seed002(0.01).reads_eval_metrics  # the training loss
    assert seed002(0.01, monitor="eval_loss").reads_eval_metrics
    assert keras().reads_eval_metrics and not keras(monitor="train_loss").reads_eval_metrics


def test_state_is_strict_json_with_nonfinite_values():
    s = seed002(0.01)
    s.end_epoch(1, {"train_loss": float("inf")})
    state = s.state_dict()
    json.dumps(state, allow_nan=False)
    t = seed002(0.01)
    t.load_state_dict(json.loads(json.dumps(state)))
    assert t.prev == math.inf


def test_load_state_dict_rejects_other_schedule():
    with pytest.raises(ValueError):
        ConstantSchedule(0.1, 3).load_state_dict(seed002(0.1).state_dict())


# --------------------------------------------------------------------------- factory


def test_factory_builds_each_schedule_and_ignores_unrelated_keys():
    common = {"optimizer": "sgd", "batch_size": 512, "loss": "ce", "momentum": 0.0,
              "select": "best"}
    c = make_schedule({**common, "schedule": "constant", "lr": 1e-4, "epochs": 30})
    assert isinstance(c, ConstantSchedule) and c.epochs == 30 and c.lr == 1e-4
    p = make_schedule({**common, "schedule": "plateau_drop", "lr": 0.01, "max_epochs": 50,
                       "threshold": 0.02, "patience": 3, "factor": 0.5, "max_drops": 2,
                       "monitor": "eval_loss"})
    assert isinstance(p, PlateauDropSchedule)
    assert (p.max_epochs, p.threshold, p.patience, p.factor, p.max_drops, p.monitor) == (
        50, 0.02, 3, 0.5, 2, "eval_loss")
    k = make_schedule({**common, "schedule": "keras_plateau", "lr": 1e-3, "monitor": "eval_loss",
                       "reduce_factor": 0.5, "reduce_patience": 3, "reduce_min_delta": 0.01,
                       "cooldown": 1, "min_lr": 1e-6, "stop_patience": 7,
                       "stop_min_delta": 0.001, "max_epochs": 99,
                       # plateau_drop-only keys are ignored by keras_plateau (the config rejects them earlier)
                       "patience": 2, "threshold": 0.5})
    assert isinstance(k, KerasPlateauSchedule)
    assert (k.reduce_factor, k.reduce_patience, k.reduce_min_delta, k.cooldown, k.min_lr,
            k.stop_patience, k.stop_min_delta, k.max_epochs) == (
        0.5, 3, 0.01, 1, 1e-6, 7, 0.001, 99)


def test_recipe_defaults_to_constant_and_each_schedule_has_its_own_length_key():
    assert isinstance(make_schedule(cfg.check_recipe({"lr": 0.1, "batch_size": 1, "epochs": 5}, "r")),
                      ConstantSchedule)
    with pytest.raises(cfg.ConfigError, match="'r.max_epochs'.*constant"):
        recipe("constant", lr=0.1, epochs=4, max_epochs=4)
    with pytest.raises(cfg.ConfigError, match="'r.epochs'.*keras_plateau"):
        recipe("keras_plateau", lr=0.1, epochs=10)


def test_factory_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        make_schedule({"schedule": "cosine", "lr": 0.1})  # the factory checks too, for direct callers
    msg = str(e.value)
    for name in ("constant", "plateau_drop", "keras_plateau", "cosine"):
        assert name in msg


@pytest.mark.parametrize(
    "bad",
    [
        {"schedule": "constant", "epochs": 3},  # no lr
        {"schedule": "constant", "lr": 0.1},  # no epochs
        {"schedule": "constant", "lr": 0.0, "epochs": 3},
        {"schedule": "constant", "lr": 0.1, "epochs": 0},
        {"schedule": "plateau_drop", "lr": 0.1, "patience": 0},
        {"schedule": "keras_plateau", "lr": 0.1, "reduce_factor": 1.5},
    ],
)
def test_factory_bad_recipes(bad):
    with pytest.raises(ValueError):
        make_schedule(cfg.check_recipe({"batch_size": 1, **bad}, "r"))


def test_factory_rejects_non_dict():
    with pytest.raises(TypeError):
        make_schedule(["constant"])
