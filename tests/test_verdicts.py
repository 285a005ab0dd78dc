"""Verdicts: each number of a paper table agrees with the paper's, differs, or cannot be compared (and why)."""

import math

import pytest

from cnnrepro import config as cfg
from cnnrepro.tables import verdicts as vd
from cnnrepro.tables.verdicts import Cell, Stats


def rules(**overrides):
    base = vd.default_rules()
    for kind, keys in overrides.items():
        base[kind] = {**base[kind], **keys}
    return base


def judge(cells, kind, scale=1.0, unit="", not_comparable=None, **overrides):
    vd.judge_column(cells, rules(**overrides)[kind], kind, scale, not_comparable, unit)
    return [(c.verdict, c.reason) for c in cells]


def test_the_schema_defaults_are_the_issues_rules():
    defaults = vd.default_rules()
    assert defaults["accuracy"]["rule"] == "within" and defaults["accuracy"]["tolerance"] == 1.5
    assert defaults["accuracy"]["interval_seeds"] == 3
    assert defaults["time"]["rule"] == "ranking" and defaults["time"]["across"] == "model"
    assert defaults["size"]["rule"] == defaults["count"]["rule"] == "exact"
    assert defaults["spread"]["rule"] == "none"


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy checks the t table; it is not a dependency")
    for df in (1, 2, 3, 5, 10, 29, 30, 31, 60, 200):
        assert vd.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df


def test_stats_over_seeds():
    assert Stats.of([]) == Stats()
    one = Stats.of([0.5, None, float("nan")])
    assert one.mean == 0.5 and one.n == 1 and one.std is None and one.low is None
    three = Stats.of([1.0, 2.0, 3.0])
    assert three.mean == 2.0 and three.std == 1.0 and three.n == 3
    assert three.low == pytest.approx(2 - 4.303 / math.sqrt(3)) and three.high == pytest.approx(2 + 4.303 / math.sqrt(3))


def test_accuracy_within_the_tolerance_in_percentage_points_or_a_hundredth_for_fractions():
    pct = [Cell("89.39", Stats(88.0, None, 1)), Cell("89.39", Stats(87.5, None, 1))]
    assert judge(pct, "accuracy", unit="pp") == [("agree", "within ±1.5 pp"), ("differ", "outside ±1.5 pp")]
    fraction = [Cell("0.9114", Stats(0.90, None, 1)), Cell("0.9114", Stats(0.89, None, 1))]
    assert [v for v, _ in judge(fraction, "accuracy", scale=0.01)] == ["agree", "differ"]


def test_with_three_seeds_the_paper_must_lie_inside_our_interval():
    inside = Stats.of([88.0, 89.0, 90.0])  # 89 ± 2.48
    outside = Stats.of([80.0, 80.5, 81.0])
    cells = [Cell("89.39", inside), Cell("89.39", outside)]
    (v1, r1), (v2, r2) = judge(cells, "accuracy", unit="pp")
    assert (v1, v2) == ("agree", "differ")
    assert "inside our 95 % interval" in r1 and "(3 seeds)" in r1 and "outside" in r2
    # Two seeds are not enough for the interval: the tolerance decides.
    assert judge([Cell("89.39", Stats.of([88.5, 89.5]))], "accuracy", unit="pp") == [("agree", "within ±1.5 pp")]


def test_loss_is_relative_and_counts_and_sizes_are_exact_at_the_papers_decimals():
    assert judge([Cell("0.2100", Stats(0.225, None, 1)), Cell("0.2100", Stats(0.24, None, 1))], "loss") == [
        ("agree", "within ±10 %"), ("differ", "outside ±10 %")]
    assert [v for v, _ in judge([Cell("746638", Stats(746638.0, None, 1)), Cell("746638", Stats(746637.0))],
                                "count")] == ["agree", "differ"]
    size = judge([Cell("2.99", Stats(2.9912, None, 1)), Cell("2.99", Stats(2.94, None, 1))], "size")
    assert size[0] == ("agree", "equal at the paper's 2 decimals")
    assert size[1] == ("differ", "2.94 ≠ 2.99 at the paper's 2 decimals")


def test_latency_compares_rankings_across_models_within_a_group():
    # Seed 002's Tabela 7 shape: five models on one dataset; ours twice as fast but in the same order, except one.
    paper = ["5.25", "2.64", "36.47", "0.76", "1.66"]
    ours = [2.0, 1.0, 20.0, 0.5, 0.6]
    cells = [Cell(p, Stats(o, None, 1), group=("CIFAR-10",)) for p, o in zip(paper, ours)]
    assert all(v == "agree" for v, _ in judge(cells, "time"))
    assert cells[2].reason == "rank 5 of 5 models (smallest first), as in the paper"
    ours[3], ours[4] = 0.7, 0.6  # AlexNet slower than VGG19 here
    cells = [Cell(p, Stats(o, None, 1), group=("CIFAR-10",)) for p, o in zip(paper, ours)]
    verdicts = judge(cells, "time")
    assert verdicts[3] == ("differ", "rank 2 of 5 models (smallest first); the paper's rank 1")
    assert verdicts[0][0] == "agree"
    # One model per group (a per-model table), or no column naming models at all: nothing to rank.
    alone = judge([Cell("2.64", Stats(1.0, None, 1), group=("CIFAR-10",))], "time")
    assert alone[0][0] == "not comparable" and "two or more" in alone[0][1]
    single = judge([Cell("2.64", Stats(1.0, None, 1), group=None)], "time")
    assert single == [("not comparable", "one model in this table: ranked where the paper compares models")]


def test_what_cannot_be_compared_says_why():
    cells = [Cell("", Stats(90.0, None, 1)), Cell("2.64", Stats(), unavailable="no GPU here"),
             Cell("0.10", Stats(0.5, None, 1))]
    assert judge(cells[:2], "accuracy") == [("not comparable", "not printed in the paper ('-')"),
                                            ("not comparable", "no GPU here")]
    assert judge(cells[2:], "spread") == [("not comparable", "a spread over timed images, shown beside its mean")]
    assert judge([Cell("95.03", Stats(80.0, None, 1))], "accuracy", not_comparable="undefined in the paper") == [
        ("not comparable", "undefined in the paper")]


def test_a_study_overrides_single_keys_of_a_rule(raw_config):
    raw_config["studies"]["seed001_resnet_mobilenet_cifar10"]["verdicts"] = {"accuracy": {"tolerance": 3.0}}
    config = cfg.validate(raw_config)
    mine = vd.study_rules(config, "seed001_resnet_mobilenet_cifar10")
    assert mine["accuracy"]["tolerance"] == 3.0 and mine["accuracy"]["interval_seeds"] == 3
    assert vd.study_rules(config, "seed000_resnet_mnist")["accuracy"]["tolerance"] == 1.5


def test_a_bad_rule_is_a_config_error_naming_it(raw_config):
    raw_config["verdicts"] = {"accuracy": {"rule": "roughly"}}
    with pytest.raises(cfg.ConfigError, match="verdicts.accuracy.rule.*roughly.*within, exact, ranking, none"):
        cfg.validate(raw_config)


def test_every_metric_of_the_built_in_tables_has_a_kind(raw_config):
    config = cfg.validate(raw_config)
    for study in config["studies"].values():
        for table in study["tables"]:
            for metric, source in table["metrics"].items():
                kind, _ = vd.metric_kind(table, metric)
                assert kind in vd.KINDS, (table["file"], metric, source)
