"""Learning-rate schedules and stopping rules (pure Python, no torch).

The training loop owns the optimizer; a :class:`Schedule` only decides.  After
every epoch the loop calls ``schedule.end_epoch(epoch, logs)`` with the 1-based
epoch number and that epoch's metrics (``"train_loss"``, ``"eval_loss"``,
``"eval_acc"``, ...).  The returned :class:`EpochDecision` says

* ``lr``   -- the learning rate for the *next* epoch.  When ``stop`` is true it
  is the final lr of the run (it may already include a reduction made at this
  last epoch, as in Keras and in the seed-002 code, where the 4th drop sets an
  lr that is never trained with);
* ``stop`` -- whether training ends after this epoch;
* ``reason`` -- why it stops (``"max_epochs"``, ``"max_drops"``,
  ``"early_stopping"``), else None;
* ``best`` -- whether this epoch is the best so far for the schedule's selection
  criterion (used to keep the "best" checkpoint).

Epoch 1 trains with ``schedule.initial_lr`` (``schedule.lr`` always holds the
lr for the next epoch to train).  ``state_dict()``/``load_state_dict()`` hold
only JSON-serialisable values, so a run can be resumed exactly.

Every parameter is required: the defaults (the authors' values) live in the config schema's
per-schedule branches, and :func:`make_schedule` takes a recipe checked against it.

Semantic decisions (documented because the sources leave them open)
-------------------------------------------------------------------
General
  * ``end_epoch`` must be called with consecutive epochs 1, 2, 3, ... (after a
    resume: ``state["epoch"] + 1``); anything else raises ``ValueError``.
    Calling it after a stop decision raises ``RuntimeError``.
  * A missing monitored key in ``logs`` raises ``KeyError`` (Keras would warn
    and skip the epoch; in this project a missing metric is a bug).  A schedule
    whose ``reads_eval_metrics`` is true is therefore fed an evaluation every
    epoch; the others may get epochs without ``eval_*`` keys (``recipe.eval_every``).
  * ``continuable`` schedules use their total only as a cap, so a longer run
    can continue a finished shorter one (``continue_past_cap`` after
    ``load_state_dict``): epoch grid chaining.
  * Comparisons are the literal ones of the originals, so a NaN value is never
    an "improvement" (Keras) and is never "stalled" in seed 002 (``nan < 0.01``
    is False there, which resets the stall counter, as the original code would).
  * Learning rates are Python floats multiplied by the factor at each drop
    (0.01 -> 0.001 -> 0.0001 -> 1e-05 -> 1.0000000000000002e-06).  Keras keeps
    the lr in a float32 variable; we do not emulate that rounding (it only
    matters for ``min_lr > 0`` near the bound).
  * ``best`` for :class:`ConstantSchedule` and :class:`PlateauDropSchedule` is
    the highest ``eval_acc`` so far, strictly greater than the previous best
    (seed 002 saves when ``acc > best_acc``); epochs without ``eval_acc`` are
    never best.  For :class:`KerasPlateauSchedule` it is the EarlyStopping
    improvement test (lowest monitored value; strict when ``stop_min_delta`` is
    0, which is also what ModelCheckpoint(save_best_only) does).

Seed 002 (:class:`PlateauDropSchedule`), the spec's numbered steps
  Epoch 1 is never stalled (there is no previous loss).  From epoch 2 on the
  epoch is stalled when ``L_prev - L_cur < threshold`` (signed: an increase is
  stalled); otherwise the counter resets to 0.  When the counter reaches
  ``patience`` the lr is multiplied by ``factor``, the drop count increments and
  the counter resets.  ``L_prev`` is always the previous epoch's loss, also
  across drops.  Stop as soon as drops == ``max_drops`` or at ``max_epochs``.
  With a flat loss and the defaults: drops at epochs 11, 21, 31, 41; epochs
  1-11 train at 1e-2, 12-21 at 1e-3, 22-31 at 1e-4, 32-41 at 1e-5; the run
  stops after epoch 41 with lr 1e-6 set but never trained.

Seed 003 (:class:`KerasPlateauSchedule`), Keras 3 callbacks
  Both callbacks see the same logs each epoch, EarlyStopping first, then
  ReduceLROnPlateau; the stop takes effect after the epoch, so a reduction made
  at the stopping epoch is still reported in ``lr``.

  ReduceLROnPlateau (mode min): ``best`` starts at +inf, ``wait = 0``,
  ``cooldown_counter = 0``.  Each epoch: if in cooldown (counter > 0) decrement
  the counter and set ``wait = 0``; then if ``current < best - min_delta``:
  ``best = current, wait = 0``; elif not in cooldown (re-checked after the
  decrement): ``wait += 1`` and if ``wait >= patience`` and ``lr > min_lr``:
  ``lr = max(lr * factor, min_lr)``, ``cooldown_counter = cooldown``,
  ``wait = 0``.  (When ``lr <= min_lr`` nothing happens and wait keeps growing.)
  Keras releases computing ``current + min_delta < best`` instead differ only
  in the last floating-point bit.

  EarlyStopping (mode min, baseline None, start_from_epoch 0): ``best`` starts
  at +inf, ``wait = 0``.  Each epoch: ``wait += 1``; if
  ``current + min_delta < best`` (Keras stores min_delta negated and tests
  ``current - min_delta < best``): ``best = current, wait = 0``; else if
  ``wait >= patience`` and this is not the first epoch (Keras' ``epoch > 0``),
  stop.  So with patience 10 the run stops 10 epochs after the last
  improvement (e.g. best at 586, stop after 596).
  ``max_epochs`` (Keras' ``epochs=10000``) also stops the run.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EpochDecision",
    "Schedule",
    "ConstantSchedule",
    "PlateauDropSchedule",
    "KerasPlateauSchedule",
    "SCHEDULES",
    "make_schedule",
]


@dataclass
class EpochDecision:
    lr: float
    stop: bool
    reason: str | None = None
    best: bool = False


# --------------------------------------------------------------------------- helpers


def _enc(x: float | None) -> float | str | None:
    """Float -> strict-JSON value (non-finite floats become strings)."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _dec(x: float | str | None) -> float | None:
    if x is None:
        return None
    return float(x)


def _check_pos_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_pos_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _metric(logs: dict, key: str) -> float:
    if key not in logs or logs[key] is None:
        raise KeyError(
            f"schedule monitors {key!r} but the epoch logs only have {sorted(logs)}"
        )
    return float(logs[key])


# --------------------------------------------------------------------------- base


class Schedule:
    """Base class: template method ``end_epoch`` -> subclass ``_decide``."""

    name: str = "base"
    # True when a run of N epochs is exactly the first N epochs of a run of M > N epochs with the same settings:
    # the total only caps the run and nothing before the cap depends on it (no warm-up or decay to a total).
    # Epoch grids of such a schedule can be chained (cnnrepro.engine.chaining); a schedule annealing to its total
    # (cosine, one-cycle) must leave it False.
    continuable: bool = False

    def __init__(self, lr: float):
        self.initial_lr = _check_pos_float("lr", lr)
        self.lr = self.initial_lr
        self.epoch = 0  # last epoch seen
        self.stopped = False
        self.best_value: float | None = None  # of the selection criterion
        self.best_epoch: int | None = None

    # -- protocol ---------------------------------------------------------------
    def end_epoch(self, epoch: int, logs: dict) -> EpochDecision:
        if self.stopped:
            raise RuntimeError(
                f"{type(self).__name__}: end_epoch called after the stop decision "
                f"(epoch {self.epoch})"
            )
        if epoch != self.epoch + 1:
            raise ValueError(
                f"{type(self).__name__}: expected epoch {self.epoch + 1}, got {epoch}"
            )
        logs = dict(logs or {})
        decision = self._decide(epoch, logs)
        self.epoch = epoch
        if decision.best:
            self.best_epoch = epoch
        self.lr = decision.lr
        self.stopped = decision.stop
        return decision

    def _decide(self, epoch: int, logs: dict) -> EpochDecision:  # pragma: no cover
        raise NotImplementedError

    @property
    def reads_eval_metrics(self) -> bool:
        """Whether the decisions read an evaluation metric, so that every epoch must be evaluated."""
        return False

    def continue_past_cap(self) -> None:
        """Undo a stop at the epoch cap, as a longer run of the same settings never stopped there (epoch grid
        chaining: continue a finished N-epoch run into an M-epoch one). Only for a stop reason "max_epochs"."""
        if not self.continuable:
            raise ValueError(f"schedule {self.name!r} depends on its total epochs; a longer run cannot continue a "
                             "shorter one")
        self.stopped = False

    # -- best = highest eval_acc (Constant, PlateauDrop) ------------------------
    def _best_by_max_acc(self, logs: dict) -> bool:
        acc = logs.get("eval_acc")
        if acc is None:
            return False
        acc = float(acc)
        if self.best_value is None or acc > self.best_value:
            self.best_value = acc
            return True
        return False

    # -- state ----------------------------------------------------------------
    def _settings(self) -> dict:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        d = {"schedule": self.name, "lr": self.initial_lr}
        d.update(self._settings())
        return d

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, d: dict) -> None:
        pass

    def state_dict(self) -> dict:
        d = {
            "schedule": self.name,
            "epoch": self.epoch,
            "lr": self.lr,
            "stopped": self.stopped,
            "best_value": _enc(self.best_value),
            "best_epoch": self.best_epoch,
        }
        d.update(self._extra_state())
        return d

    def load_state_dict(self, d: dict) -> None:
        if d.get("schedule") != self.name:
            raise ValueError(
                f"state is for schedule {d.get('schedule')!r}, not {self.name!r}"
            )
        self.epoch = int(d["epoch"])
        self.lr = float(d["lr"])
        self.stopped = bool(d["stopped"])
        self.best_value = _dec(d["best_value"])
        self.best_epoch = d["best_epoch"]
        self._load_extra_state(d)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "schedule")
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- constant


class ConstantSchedule(Schedule):
    """Fixed lr for exactly ``epochs`` epochs (seeds 000, 001, 004)."""

    name = "constant"
    continuable = True

    def __init__(self, lr: float, epochs: int):
        super().__init__(lr)
        self.epochs = _check_pos_int("epochs", epochs)

    @property
    def length(self) -> int:
        """The most epochs the run can take."""
        return self.epochs

    def _settings(self) -> dict:
        return {"epochs": self.epochs}

    def _decide(self, epoch: int, logs: dict) -> EpochDecision:
        best = self._best_by_max_acc(logs)
        stop = epoch >= self.epochs
        return EpochDecision(self.lr, stop, "max_epochs" if stop else None, best)


# --------------------------------------------------------------------------- seed 002


class PlateauDropSchedule(Schedule):
    """Seed 002: drop lr after ``patience`` consecutive stalled epochs."""

    name = "plateau_drop"
    continuable = True  # max_epochs only caps the run

    def __init__(
        self,
        lr: float,
        *,
        max_epochs: int,
        monitor: str,
        threshold: float,
        patience: int,
        factor: float,
        max_drops: int,
    ):
        super().__init__(lr)
        self.max_epochs = _check_pos_int("max_epochs", max_epochs)
        self.monitor = str(monitor)
        self.threshold = float(threshold)
        self.patience = _check_pos_int("patience", patience)
        self.factor = _check_pos_float("factor", factor)
        self.max_drops = _check_pos_int("max_drops", max_drops)
        self.prev: float | None = None
        self.stalled = 0
        self.drops = 0

    @property
    def length(self) -> int:
        """The most epochs the run can take."""
        return self.max_epochs

    @property
    def reads_eval_metrics(self) -> bool:
        return self.monitor.startswith("eval_")

    def _settings(self) -> dict:
        return {
            "max_epochs": self.max_epochs,
            "monitor": self.monitor,
            "threshold": self.threshold,
            "patience": self.patience,
            "factor": self.factor,
            "max_drops": self.max_drops,
        }

    def _decide(self, epoch: int, logs: dict) -> EpochDecision:
        current = _metric(logs, self.monitor)
        lr = self.lr
        if self.prev is not None:  # from the second epoch on
            if (self.prev - current) < self.threshold:  # signed difference
                self.stalled += 1
            else:
                self.stalled = 0
            if self.stalled >= self.patience:
                lr = lr * self.factor
                self.drops += 1
                self.stalled = 0
        self.prev = current
        best = self._best_by_max_acc(logs)
        if self.drops >= self.max_drops:
            return EpochDecision(lr, True, "max_drops", best)
        if epoch >= self.max_epochs:
            return EpochDecision(lr, True, "max_epochs", best)
        return EpochDecision(lr, False, None, best)

    def _extra_state(self) -> dict:
        return {"prev": _enc(self.prev), "stalled": self.stalled, "drops": self.drops}

    def _load_extra_state(self, d: dict) -> None:
        self.prev = _dec(d["prev"])
        self.stalled = int(d["stalled"])
        self.drops = int(d["drops"])


# --------------------------------------------------------------------------- seed 003


class KerasPlateauSchedule(Schedule):
    """Seed 003: Keras 3 EarlyStopping + ReduceLROnPlateau, mode 'min'."""

    name = "keras_plateau"
    continuable = True  # max_epochs only caps the run

    def __init__(
        self,
        lr: float,
        *,
        max_epochs: int,
        monitor: str,
        reduce_factor: float,
        reduce_patience: int,
        reduce_min_delta: float,
        cooldown: int,
        min_lr: float,
        stop_patience: int,
        stop_min_delta: float,
    ):
        super().__init__(lr)
        self.max_epochs = _check_pos_int("max_epochs", max_epochs)
        self.monitor = str(monitor)
        self.reduce_factor = _check_pos_float("reduce_factor", reduce_factor)
        if self.reduce_factor >= 1.0:  # as Keras
            raise ValueError(
                f"reduce_factor must be < 1.0 (Keras), got {reduce_factor!r}"
            )
        self.reduce_patience = _check_pos_int("reduce_patience", reduce_patience, 0)
        self.reduce_min_delta = float(reduce_min_delta)
        self.cooldown = _check_pos_int("cooldown", cooldown, 0)
        self.min_lr = float(min_lr)
        self.stop_patience = _check_pos_int("stop_patience", stop_patience, 0)
        self.stop_min_delta = abs(float(stop_min_delta))  # Keras takes abs()
        # ReduceLROnPlateau state (best None == +inf)
        self.reduce_best: float | None = None
        self.reduce_wait = 0
        self.cooldown_counter = 0
        # EarlyStopping state: best lives in self.best_value (None == +inf)
        self.stop_wait = 0

    @property
    def length(self) -> int:
        """The most epochs the run can take."""
        return self.max_epochs

    @property
    def reads_eval_metrics(self) -> bool:
        return self.monitor.startswith("eval_")

    def _settings(self) -> dict:
        return {
            "max_epochs": self.max_epochs,
            "monitor": self.monitor,
            "reduce_factor": self.reduce_factor,
            "reduce_patience": self.reduce_patience,
            "reduce_min_delta": self.reduce_min_delta,
            "cooldown": self.cooldown,
            "min_lr": self.min_lr,
            "stop_patience": self.stop_patience,
            "stop_min_delta": self.stop_min_delta,
        }

    def _decide(self, epoch: int, logs: dict) -> EpochDecision:
        current = _metric(logs, self.monitor)
        inf = math.inf

        # --- EarlyStopping.on_epoch_end (first in the authors' callback list)
        stop = False
        best = False
        self.stop_wait += 1
        es_best = inf if self.best_value is None else self.best_value
        if current + self.stop_min_delta < es_best:
            self.best_value = current
            self.stop_wait = 0
            best = True
        elif self.stop_wait >= self.stop_patience and epoch > 1:  # Keras: epoch > 0
            stop = True

        # --- ReduceLROnPlateau.on_epoch_end (same logs, same epoch)
        lr = self.lr
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.reduce_wait = 0
        rl_best = inf if self.reduce_best is None else self.reduce_best
        if current < rl_best - self.reduce_min_delta:
            self.reduce_best = current
            self.reduce_wait = 0
        elif not self.cooldown_counter > 0:
            self.reduce_wait += 1
            if self.reduce_wait >= self.reduce_patience:
                if lr > self.min_lr:
                    lr = max(lr * self.reduce_factor, self.min_lr)
                    self.cooldown_counter = self.cooldown
                    self.reduce_wait = 0

        if stop:
            return EpochDecision(lr, True, "early_stopping", best)
        if epoch >= self.max_epochs:
            return EpochDecision(lr, True, "max_epochs", best)
        return EpochDecision(lr, False, None, best)

    def _extra_state(self) -> dict:
        return {
            "reduce_best": _enc(self.reduce_best),
            "reduce_wait": self.reduce_wait,
            "cooldown_counter": self.cooldown_counter,
            "stop_wait": self.stop_wait,
        }

    def _load_extra_state(self, d: dict) -> None:
        self.reduce_best = _dec(d["reduce_best"])
        self.reduce_wait = int(d["reduce_wait"])
        self.cooldown_counter = int(d["cooldown_counter"])
        self.stop_wait = int(d["stop_wait"])


# --------------------------------------------------------------------------- factory

SCHEDULES: dict[str, type[Schedule]] = {
    ConstantSchedule.name: ConstantSchedule,
    PlateauDropSchedule.name: PlateauDropSchedule,
    KerasPlateauSchedule.name: KerasPlateauSchedule,
}


def make_schedule(recipe: dict) -> Schedule:
    """Build the schedule named by ``recipe["schedule"]`` from a recipe checked by the config schema.

    The recipe keys that are parameters of that schedule are passed as keyword arguments; the others
    (optimizer, batch_size, loss, ...) belong to other parts of the run. The schema gives each schedule
    its own keys and defaults (``epochs`` for constant, ``max_epochs`` for the others) and rejects a key
    the schedule does not use, so nothing here has to guess.
    """
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict, got {type(recipe).__name__}")
    name = recipe["schedule"]
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; valid schedules: {', '.join(sorted(SCHEDULES))}"
        )
    cls = SCHEDULES[name]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return cls(**{k: recipe[k] for k in params if k in recipe})
