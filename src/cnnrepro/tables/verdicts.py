"""Verdicts: does each of our numbers agree with the paper's?

Every number of a paper table has a kind (accuracy, loss, time, size, count, spread), taken from the summary field
it is compared with (:data:`FIELD_KINDS`) unless the table's ``kinds`` says otherwise. Each kind has a rule in the
config (``verdicts``, defaults in the schema, overridable per study):

- ``within``: agree when ``|ours - paper| <= tolerance`` (in the number's unit; percentage points for accuracies,
  scaled for accuracies printed as fractions) or ``<= relative * |paper|``; with ``interval_seeds`` or more seeds
  behind our number, agree when the paper's value lies inside our 95 % interval of the mean instead;
- ``exact``: agree when ours, rounded to the decimals the paper prints, equals the paper's;
- ``ranking``: agree when the row has the same rank among the rows of the table that differ only in ``across``
  (the models), ordered by the paper's numbers and by ours: hardware differs, orderings should not;
- ``none``: never compared (``reason``).

A cell is ``agree``, ``differ`` or ``not comparable``, always with a reason a reader can check.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from cnnrepro import config as cfg

AGREE, DIFFER, NOT_COMPARABLE = "agree", "differ", "not comparable"
VERDICTS = (AGREE, DIFFER, NOT_COMPARABLE)
KINDS = ("accuracy", "loss", "time", "size", "count", "spread")

# Summary field -> (kind, scale of the accuracy tolerance): accuracies in % take the tolerance in percentage
# points as it is, accuracies stored as fractions (and F1 scores) a hundredth of it.
FIELD_KINDS: dict[str, tuple[str, float]] = {
    "test_top1_pct": ("accuracy", 1.0), "test_top5_pct": ("accuracy", 1.0), "train_acc_last_pct": ("accuracy", 1.0),
    "test_acc": ("accuracy", 0.01), "eval_acc": ("accuracy", 0.01), "train_acc_last": ("accuracy", 0.01),
    "macro_f1": ("accuracy", 0.01), "test_f1_by_class": ("accuracy", 0.01),
    "test_loss": ("loss", 1.0), "eval_loss": ("loss", 1.0), "train_loss_first": ("loss", 1.0),
    "train_loss_last": ("loss", 1.0),
    "train_seconds": ("time", 1.0), "cpu_time_ms_mean": ("time", 1.0), "gpu_time_ms_mean": ("time", 1.0),
    "cpu_latency_median_ms": ("time", 1.0), "gpu_latency_median_ms": ("time", 1.0),
    "cpu_time_ms_std": ("spread", 1.0), "gpu_time_ms_std": ("spread", 1.0),
    "params_count": ("count", 1.0), "params_trainable": ("count", 1.0), "flops_forward": ("count", 1.0),
    "epochs_run": ("count", 1.0), "selected_epoch": ("count", 1.0),
    "size_MiB": ("size", 1.0), "size_MB_1024000": ("size", 1.0), "size_MB_paper_unit": ("size", 1.0),
    "state_dict_MiB": ("size", 1.0), "peak_memory_bytes": ("size", 1.0),
}

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (standard tables); beyond, the
# Cornish-Fisher expansion around the normal quantile (two terms) is within 0.001.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (for a two-sided 95 % interval)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Stats:
    """Our number for one cell: the mean over the runs that have it, their sample std and 95 % interval."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, values: Iterable[Any]) -> "Stats":
        numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not numbers:
            return cls()
        mean = statistics.fmean(numbers)
        if len(numbers) < 2:
            return cls(mean, None, 1)
        std = statistics.stdev(numbers)
        half = t975(len(numbers) - 1) * std / math.sqrt(len(numbers))
        return cls(mean, std, len(numbers), mean - half, mean + half)


def field_base(source: str | None) -> str | None:
    """The summary field a metrics entry names, without its ``.<key>`` (``test_f1_by_class.{class}``)."""
    return None if source is None else source.split(".", 1)[0]


def metric_kind(table: dict, metric: str) -> tuple[str | None, float]:
    """(kind, accuracy scale) of a paper metric column: the table's ``kinds`` first, then its summary field's."""
    kinds = table.get("kinds") or {}
    base = field_base((table.get("metrics") or {}).get(metric))
    kind, scale = FIELD_KINDS.get(base, (None, 1.0))
    if metric in kinds:
        kind = kinds[metric]
        if kind != "accuracy":
            scale = 1.0
    return kind, scale


def study_rules(config: dict, study: str) -> dict[str, dict]:
    """The verdict rule of every kind for ``study``: the top-level ``verdicts`` with the study's keys over them."""
    rules = copy.deepcopy(config["verdicts"])
    for kind, override in ((config["studies"][study].get("verdicts")) or {}).items():
        rules[kind] = {**rules[kind], **override}
    return rules


def default_rules() -> dict[str, dict]:
    """The schema's verdict rules (for a table judged outside a validated config, as in tests)."""
    return cfg.defaults("verdicts")


def decimals_of(printed: str) -> int:
    """How many decimals a printed number has (``0.2100`` -> 4, ``3736`` -> 0)."""
    text = str(printed).strip()
    return len(text.split(".", 1)[1]) if "." in text else 0


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


@dataclass
class Cell:
    """One number of a paper table to judge. ``unavailable`` says why we have no number (None: we have one)."""

    paper: str
    ours: Stats
    unavailable: str | None = None
    # The ranking group: the row's shown key cells other than the ones naming `across` (None: no column does).
    group: tuple | None = ()
    verdict: str = NOT_COMPARABLE
    reason: str = ""


def judge_column(cells: Sequence[Cell], rule: dict | None, kind: str | None, scale: float,
                 not_comparable: str | None = None, unit: str = "") -> None:
    """Set ``verdict`` and ``reason`` of every cell of one metric column of one table (a ranking compares the
    column's cells with each other)."""
    pending: list[Cell] = []
    for cell in cells:
        paper = cell.paper.strip()
        if not paper:
            cell.verdict, cell.reason = NOT_COMPARABLE, "not printed in the paper ('-')"
        elif not_comparable:
            cell.verdict, cell.reason = NOT_COMPARABLE, not_comparable
        elif rule is None or kind is None:
            cell.verdict, cell.reason = NOT_COMPARABLE, "no verdict rule for this kind of number"
        elif rule["rule"] == "none":
            cell.verdict, cell.reason = NOT_COMPARABLE, rule["reason"]
        elif cell.unavailable is not None or cell.ours.mean is None:
            cell.verdict, cell.reason = NOT_COMPARABLE, cell.unavailable or "no number of ours"
        else:
            pending.append(cell)
    if rule is None or not pending:
        return
    if rule["rule"] == "ranking":
        _judge_ranking(pending, rule)
        return
    for cell in pending:
        paper, ours = float(cell.paper), cell.ours
        places = decimals_of(cell.paper)
        if rule["rule"] == "exact":
            same = round(ours.mean, places) == round(paper, places)
            cell.verdict = AGREE if same else DIFFER
            cell.reason = (f"equal at the paper's {places} decimals" if same
                           else f"{_fmt(ours.mean, places)} ≠ {cell.paper} at the paper's {places} decimals")
            continue
        seeds = rule.get("interval_seeds")
        if seeds and ours.n >= seeds and ours.std:
            inside = ours.low <= paper <= ours.high
            cell.verdict = AGREE if inside else DIFFER
            span = f"[{_fmt(ours.low, places + 1)}, {_fmt(ours.high, places + 1)}]"
            cell.reason = (f"the paper's value is {'inside' if inside else 'outside'} our 95 % interval {span} "
                           f"({ours.n} seeds)")
            continue
        diff = abs(ours.mean - paper)
        limits = []
        if rule.get("tolerance") is not None:
            tolerance = rule["tolerance"] * (scale if kind == "accuracy" else 1.0)
            limits.append((diff <= tolerance + 1e-12, f"±{_fmt_limit(tolerance)}{' ' + unit if unit else ''}"))
        if rule.get("relative") is not None and paper != 0:
            limits.append((diff <= rule["relative"] * abs(paper) + 1e-12, f"±{rule['relative'] * 100:g} %"))
        if not limits:
            cell.verdict, cell.reason = NOT_COMPARABLE, "the rule sets no tolerance"
            continue
        ok = any(inside for inside, _ in limits)
        cell.verdict = AGREE if ok else DIFFER
        cell.reason = f"{'within' if ok else 'outside'} {' or '.join(text for _, text in limits)}"


def _fmt_limit(value: float) -> str:
    return f"{value:g}"


def _judge_ranking(cells: list[Cell], rule: dict) -> None:
    across = rule.get("across", "model")
    groups: dict[tuple | None, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    for group, members in groups.items():
        if group is None:  # no key column names the models: the table shows one
            for cell in members:
                cell.verdict = NOT_COMPARABLE
                cell.reason = f"one {across} in this table: ranked where the paper compares {across}s"
            continue
        if len(members) < 2:
            for cell in members:
                cell.verdict = NOT_COMPARABLE
                cell.reason = (f"a ranking across {across}s needs two or more in the table; this one has one "
                               "beside these other keys")
            continue
        papers = [float(c.paper) for c in members]
        ours = [c.ours.mean for c in members]
        for cell, paper, mine in zip(members, papers, ours):
            rank_paper = 1 + sum(p < paper for p in papers)
            rank_ours = 1 + sum(o < mine for o in ours)
            cell.verdict = AGREE if rank_paper == rank_ours else DIFFER
            of = f"of {len(members)} {across}s (smallest first)"
            cell.reason = (f"rank {rank_ours} {of}, as in the paper" if rank_paper == rank_ours
                           else f"rank {rank_ours} {of}; the paper's rank {rank_paper}")


def across_columns(table: dict, key_columns: Sequence[str], across: str) -> list[str]:
    """The key columns whose printed values select ``across`` (the model) through ``match``."""
    out = []
    for column, rule in (table.get("match") or {}).items():
        if column not in key_columns:
            continue
        if isinstance(rule, str):
            if rule == across:
                out.append(column)
        elif any(across in (selector or {}) for selector in rule.values()):
            out.append(column)
    return out
