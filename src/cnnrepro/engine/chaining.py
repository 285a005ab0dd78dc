"""Epoch grid chaining: a run that differs from a shorter one only in its epoch count continues from it.

Under a schedule whose total only caps the run (``Schedule.continuable``: constant, and the plateau rules whose
``max_epochs`` is a cap), the first N epochs of an M-epoch run are exactly an N-epoch run of the same settings.
So seed 004's 50 / 150 / 300-epoch runs of one (freeze level, batch size) form a chain: the 150-epoch run
starts from the 50-epoch run's final state (weights, optimizer, schedule, RNG, history) and the 300-epoch run
from the 150's: 300 epochs of work instead of 500, with results equal bit for bit to training each from
scratch (tests/test_chaining.py). The earlier run leaves that state in its ``final_state.pt`` output, which
the later run's job takes as an input (workflow/rules/engine.smk). ``chain_epoch_grids: false`` turns it off.

Pure Python (no torch), so the workflow can plan chains at start-up cheaply.
"""

from __future__ import annotations

import json

from cnnrepro.engine.schedules import SCHEDULES

# Settings that name a run rather than describe its training: they differ between the runs of a chain.
IDENTITY_KEYS = ("run_id", "variant", "grid", "assumption")


def length_key(recipe: dict) -> str:
    """The recipe key holding a run's epoch cap: ``epochs`` (constant) or ``max_epochs`` (the plateau rules)."""
    return "epochs" if "epochs" in recipe else "max_epochs"


def run_length(settings: dict) -> int:
    recipe = settings["recipe"]
    return recipe[length_key(recipe)]


def chain_key(settings: dict) -> str | None:
    """What a run shares with every run of its chain: its settings without its name and its epoch cap. None
    when its schedule depends on its total epochs (nothing can continue into it)."""
    recipe = settings["recipe"]
    if not SCHEDULES[recipe["schedule"]].continuable:
        return None
    shared = {key: value for key, value in settings.items() if key not in IDENTITY_KEYS}
    shared["recipe"] = {key: value for key, value in recipe.items() if key != length_key(recipe)}
    return json.dumps(shared, sort_keys=True, default=str)


def chain_sources(settings_by_run: dict[str, dict]) -> dict[str, str]:
    """run id -> the id of the run it continues from: among the runs with the same chain key, the longest one
    that is strictly shorter. Runs of equal length (e.g. capped by ``limits.max_epochs``) do not chain."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for run_id, settings in settings_by_run.items():
        key = chain_key(settings)
        if key is not None:
            groups.setdefault(key, []).append((run_length(settings), run_id))
    sources = {}
    for members in groups.values():
        members.sort()
        for (length, run_id) in members:
            shorter = [(n, other) for n, other in members if n < length]
            if shorter:
                sources[run_id] = max(shorter)[1]
    return sources


def check_continues(settings: dict, source: dict) -> None:
    """Raise ValueError unless ``settings`` may continue from ``source`` (same chain key, strictly longer)."""
    if chain_key(settings) is None or chain_key(settings) != chain_key(source):
        raise ValueError(f"run {settings['run_id']} cannot continue from {source['run_id']}: their settings differ "
                         "in more than the epoch count, or the schedule depends on its total epochs")
    if run_length(source) >= run_length(settings):
        raise ValueError(f"run {settings['run_id']} ({run_length(settings)} epochs) cannot continue from "
                         f"{source['run_id']} ({run_length(source)} epochs): it is not shorter")
