"""Which runs a selector picks: ``{field: value}`` pairs, as a paper table's row (``match``, ``where``), a note's
``row`` or a published-curves entry names them. One matcher for the tables and the figures, so a selector picks
the same runs in a table and in its figure."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from cnnrepro import config as cfg


def run_value(run: Mapping[str, Any], dotted: str) -> Any:
    """A run's value of a selector field, from its settings (cnnrepro.config.run_settings) or its summary
    (cnnrepro.tables.summary.summarize): its configured grid value first (limits may cap what ran), then the
    value at the dotted path (``model``, ``augment``, ``recipe.batch_size``)."""
    grid = run.get("grid") or {}
    return grid[dotted] if dotted in grid else cfg.get_path(run, dotted)


def same(value: Any, wanted: Any) -> bool:
    """Whether a run's value is the one a selector names: as numbers when both read as numbers (a paper CSV's
    "250" is batch size 250, "1e-3" is 0.001), else as text; a missing value matches nothing."""
    if value is None:
        return False
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return str(value) == str(wanted)


def selects(run: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    return all(same(run_value(run, key), wanted) for key, wanted in selector.items())


def matching(runs: Iterable[Mapping[str, Any]], study: str, selector: Mapping[str, Any]) -> list:
    """The runs of ``study`` that ``selector`` picks, in their order: the study's own runs, never a sweep's run of an
    assumption's alternative (cnnrepro.tables.assumptions compares those)."""
    return [run for run in runs if run["study"] == study and not run.get("assumption") and selects(run, selector)]


def row_selector(table: dict, row: dict) -> dict[str, Any] | None:
    """Run fields the paper row selects; None when a printed value has no mapping."""
    selector = dict(table.get("where", {}))
    for column, rule in (table.get("match") or {}).items():
        cell = row[column]
        if isinstance(rule, str):
            selector[rule] = cell
        elif cell in rule:
            selector.update(rule[cell])
        else:
            return None
    return selector
