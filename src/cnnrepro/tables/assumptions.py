"""Which value of each unstated setting the paper's numbers support.

A study declares its assumptions (``studies.<name>.assumptions``: a setting the paper never stated, the value the
study uses, why, and the plausible alternatives). With ``sweep_assumptions`` the workflow also trains, for each
alternative, the study's runs with that one setting changed (cnnrepro.config.study_variants). Here every paper
table of the study is computed again as if the study had used the alternative: each of its runs the setting
concerns replaced by the sweep's run that tries the alternative (a run it does not concern stays). Per value, the
verdicts over every comparable number and the mean absolute difference from the paper on the study's headline
metric; the value with the most agreeing numbers (then the smallest difference) is the one the paper supports.

The study's own tables (cnnrepro.tables.aggregate) always stay those of the declared values.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import pandas as pd

from cnnrepro import config as cfg
from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.layout import split_columns, table_name
from cnnrepro.tables.paper import paper_table
from cnnrepro.tables.select import same
from cnnrepro.tables.summary import PathLike

# assumptions.csv: one row per assumption and value, the study's own value first.
COLUMNS = ["assumption", "key", "value", "declared", "basis", "runs", "agree", "differ", "not_comparable",
           "comparable", "headline", "headline_mean_abs_delta", "headline_n", "best"]
# assumptions_headline.csv: the headline metric's numbers per assumption and value, one row per printed cell.
HEADLINE_COLUMNS = ["assumption", "key", "value", "declared", "headline", "table", "cell", "paper", "ours"]


def compared(config: dict, study: str) -> bool:
    """Whether the study's assumptions are compared: a sweep, and an assumption with an alternative."""
    return bool(config["sweep_assumptions"]) and any(a["alternatives"] for a in config["studies"][study]["assumptions"])


def headline_metric(config: dict, study: str, columns_of: Mapping[str, list[str]]) -> str | None:
    """The study's headline metric column: ``headline``, or the first metric column of its first table.
    ``columns_of`` gives each table's CSV columns, by table name."""
    spec = config["studies"][study]
    if spec["headline"]:
        return spec["headline"]
    for table in spec["tables"]:
        metric_cols, _ = split_columns(table, columns_of[table_name(config, table)])
        if metric_cols:
            return metric_cols[0]
    return None


def _with_alternative(summaries: list[dict], index: int, value: Any) -> tuple[list[dict], int]:
    """The study's own summaries with each run that assumption ``index``'s alternative ``value`` concerns replaced
    by its sweep's run (as one of the study's own: the paper tables select it); and how many were replaced."""
    sweep = {}
    for s in summaries:
        assumption = s.get("assumption")
        if assumption and assumption["index"] == index and same(assumption["value"], value):
            variant = s["variant"].rsplit(cfg.SWEEP_SEPARATOR, 1)[0]
            sweep[(s["dataset"], s["model"], s["freeze"], variant, str(s["seed"]))] = s
    out, replaced = [], 0
    for s in summaries:
        if s.get("assumption"):
            continue
        counterpart = sweep.get((s["dataset"], s["model"], s["freeze"], s["variant"], str(s["seed"])))
        if counterpart is None:
            out.append(s)
        else:
            out.append({k: v for k, v in counterpart.items() if k != "assumption"} | {"variant": s["variant"]})
            replaced += 1
    return out, replaced


def _score(config: dict, study: str, summaries: list[dict], paper_tables: Mapping[str, PathLike],
           columns_of: Mapping[str, list[str]], rules: Mapping[str, dict],
           headline: str | None) -> tuple[dict[str, int], list[dict]]:
    """Verdict counts over every number of the study's paper tables, and the headline metric's cells."""
    counts = {v: 0 for v in vd.VERDICTS}
    cells = []
    for table in config["studies"][study]["tables"]:
        name = table_name(config, table)
        frame = paper_table(table, study, summaries, paper_tables[name], rules)
        metrics, keys = split_columns(table, columns_of[name])
        for metric in metrics:
            for verdict in frame[f"{metric}_verdict"]:
                counts[verdict] += 1
        if headline in metrics:
            for record in frame.to_dict("records"):
                cells.append({"table": name, "cell": " · ".join(str(record[k]) for k in keys),
                              "paper": _number(record[f"{headline}_paper"]),
                              "ours": _number(record[f"{headline}_ours"])})
    return counts, cells


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def compare(config: dict, study: str, summaries: list[dict], paper_tables: Mapping[str, PathLike],
            rules: Mapping[str, dict] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(assumptions.csv, assumptions_headline.csv) of ``study`` from the summaries of its runs and its sweep's."""
    rules = rules if rules is not None else vd.study_rules(config, study)
    columns_of = {name: list(pd.read_csv(path, nrows=0).columns) for name, path in paper_tables.items()}
    headline = headline_metric(config, study, columns_of)
    spec = config["studies"][study]
    rows, headline_rows = [], []
    for index, assumption in enumerate(spec["assumptions"]):
        if not assumption["alternatives"]:
            continue
        key = assumption["key"]
        declared = cfg.declared_value(spec, key)
        group = []
        for position, value in enumerate((declared, *assumption["alternatives"])):
            is_declared = position == 0
            chosen, replaced = (([s for s in summaries if not s.get("assumption")], 0) if is_declared
                                else _with_alternative(summaries, index, value))
            counts, cells = _score(config, study, chosen, paper_tables, columns_of, rules, headline)
            deltas = [abs(c["ours"] - c["paper"]) for c in cells if c["ours"] is not None and c["paper"] is not None]
            group.append({"assumption": index, "key": key, "value": value, "declared": is_declared,
                          "basis": assumption["basis"], "runs": replaced, "agree": counts[vd.AGREE],
                          "differ": counts[vd.DIFFER], "not_comparable": counts[vd.NOT_COMPARABLE],
                          "comparable": counts[vd.AGREE] + counts[vd.DIFFER], "headline": headline,
                          "headline_mean_abs_delta": sum(deltas) / len(deltas) if deltas else None,
                          "headline_n": len(deltas), "best": False})
            headline_rows += [{"assumption": index, "key": key, "value": value, "declared": is_declared,
                               "headline": headline, **c} for c in cells]
        _mark_best(group)
        rows += group
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(headline_rows, columns=HEADLINE_COLUMNS)


def _mark_best(group: list[dict]) -> None:
    """The value the paper's numbers support: the most agreeing numbers, then the smallest headline difference
    (none marked when no value has a comparable number, or when every value scores the same)."""
    candidates = [row for row in group if row["comparable"]]
    scores = {(row["agree"], _or_inf(row["headline_mean_abs_delta"])) for row in group}
    if not candidates or len(scores) == 1:  # every value scores the same: the paper settles nothing
        return
    best = max(candidates, key=lambda row: (row["agree"], -_or_inf(row["headline_mean_abs_delta"]), row["declared"]))
    best["best"] = True


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def summary_lines(frame: pd.DataFrame) -> list[str]:
    """One line per assumption whose best-supported value is not the study's own, for the overview: "loss = ce
    agrees with 9 of 12 numbers, mse (ours) with 4"."""
    lines = []
    for _, group in frame.groupby("assumption", sort=True):
        records = group.to_dict("records")
        best = next((r for r in records if is_true(r["best"])), None)
        ours = next(r for r in records if is_true(r["declared"]))
        if best is None or best is ours:
            continue
        lines.append(f"{best['key']} = {best['value']} agrees with {int(best['agree'])} of {int(best['comparable'])} "
                     f"numbers, {ours['value']} (ours) with {int(ours['agree'])}")
    return lines


def is_true(value: Any) -> bool:
    """A boolean cell of assumptions.csv, as pandas reads it back."""
    return value is True or str(value).lower() == "true"


def assumption_rows(config: dict, study: str) -> Iterable[dict]:
    """The study's declared assumptions as the report lists them (with or without a sweep)."""
    spec = config["studies"][study]
    for index, assumption in enumerate(spec["assumptions"]):
        yield {"index": index, "key": assumption["key"], "value": cfg.declared_value(spec, assumption["key"]),
               "basis": assumption["basis"], "reason": assumption["reason"],
               "alternatives": list(assumption["alternatives"]), "where": dict(assumption["where"])}
