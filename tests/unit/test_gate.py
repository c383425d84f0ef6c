"""The promotion gates: when a new version may replace the champion (pure logic, no servers)."""

from __future__ import annotations

import json

import pytest

from loopml.gate import (
    GateDecision,
    decide_promotion,
    decide_retrain_promotion,
    improvement,
    metric_direction,
)

# Scores below are binary fractions (0.5, 0.625, 0.125, ...) where a test sits on a boundary,
# so float rounding cannot decide the outcome.


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("roc_auc", "maximize"),
        ("f1_macro", "maximize"),
        ("r2", "maximize"),
        ("accuracy", "maximize"),
        ("rmse", "minimize"),
        ("mae", "minimize"),
        ("log_loss", "minimize"),
        ("mse", "minimize"),
    ],
)
def test_metric_direction(metric, direction):
    assert metric_direction(metric) == direction


@pytest.mark.parametrize(
    ("candidate", "champion", "metric", "expected"),
    [
        (0.875, 0.75, "roc_auc", 0.125),
        (0.75, 0.875, "roc_auc", -0.125),
        (8.0, 10.0, "rmse", 2.0),  # a lower error is an improvement
        (12.0, 10.0, "rmse", -2.0),
    ],
)
def test_improvement_is_positive_when_the_candidate_is_better(
    candidate, champion, metric, expected
):
    assert improvement(candidate, champion, metric) == expected


def test_first_version_is_promoted_when_there_is_no_champion():
    decision = decide_promotion(0.61, None, metric="roc_auc", min_improvement=0.05)

    assert decision.promote is True
    assert "no champion" in decision.reason
    held_out = decision.comparisons["held_out"]
    assert held_out["candidate"] == pytest.approx(0.61)
    assert held_out["champion"] is None
    assert held_out["improvement"] is None


@pytest.mark.parametrize(
    ("candidate", "champion", "metric", "margin", "promote"),
    [
        pytest.param(0.875, 0.75, "roc_auc", 0.0, True, id="better"),
        pytest.param(0.75, 0.875, "roc_auc", 0.0, False, id="worse"),
        pytest.param(0.75, 0.75, "roc_auc", 0.0, False, id="tie-keeps-champion"),
        pytest.param(0.8125, 0.75, "roc_auc", 0.125, False, id="within-margin"),
        pytest.param(0.875, 0.75, "roc_auc", 0.125, False, id="exactly-the-margin"),
        pytest.param(0.90625, 0.75, "roc_auc", 0.125, True, id="beyond-margin"),
        pytest.param(9.0, 10.0, "rmse", 0.0, True, id="rmse-lower-is-better"),
        pytest.param(11.0, 10.0, "rmse", 0.0, False, id="rmse-higher-is-worse"),
        pytest.param(9.75, 10.0, "rmse", 0.05, False, id="rmse-within-margin"),  # 5% of 10
        pytest.param(9.25, 10.0, "rmse", 0.05, True, id="rmse-beyond-margin"),
        pytest.param(0.25, 0.5, "log_loss", 0.0, True, id="log-loss-lower-is-better"),
        pytest.param(0.625, 0.5, "f1_macro", 0.0, True, id="f1-macro-higher-is-better"),
    ],
)
def test_decide_promotion(candidate, champion, metric, margin, promote):
    decision = decide_promotion(candidate, champion, metric=metric, min_improvement=margin)

    assert decision.promote is promote
    assert decision.metric == metric
    held_out = decision.comparisons["held_out"]
    assert held_out["candidate"] == candidate
    assert held_out["champion"] == champion
    assert held_out["improvement"] == improvement(candidate, champion, metric)
    assert held_out["required_improvement"] == margin
    # The sentence a user reads names both scores and the verdict.
    assert f"{candidate:.4f}" in decision.reason
    assert f"{champion:.4f}" in decision.reason
    assert ("does not beat" in decision.reason) is (not promote)


def test_decision_round_trips_through_json_for_the_ledger():
    decision = decide_promotion(0.8, 0.7, metric="roc_auc", min_improvement=0.01)

    restored = json.loads(json.dumps(decision.to_dict()))

    assert GateDecision(**restored) == decision


def _retrain(**overrides) -> GateDecision:
    arguments = {
        "candidate_old": 0.75,
        "champion_old": 0.75,
        "candidate_recent": 0.875,
        "champion_recent": 0.75,
        "metric": "roc_auc",
        "old_data_tolerance": 0.125,
        "min_improvement": 0.0,
    }
    arguments.update(overrides)
    return decide_retrain_promotion(**arguments)


@pytest.mark.parametrize(
    ("overrides", "promote", "reason_part"),
    [
        pytest.param({}, True, "beats champion on the recent window", id="better-recent-same-old"),
        pytest.param(
            {"candidate_old": 0.625}, True, "holds up on the frozen", id="old-loss-at-tolerance"
        ),
        pytest.param(
            {"candidate_old": 0.5}, False, "frozen held-out set", id="old-loss-beyond-tolerance"
        ),
        pytest.param(
            {"candidate_old": 0.5, "candidate_recent": 1.0},
            False,
            "frozen held-out set",
            id="recent-gain-cannot-buy-old-loss",
        ),
        pytest.param({"candidate_recent": 0.625}, False, "does not beat", id="worse-recent-window"),
        pytest.param(
            {"candidate_recent": 0.8125, "min_improvement": 0.125},
            False,
            "does not beat",
            id="recent-gain-within-margin",
        ),
        pytest.param(
            {"candidate_recent": 0.90625, "min_improvement": 0.125},
            True,
            "beats champion",
            id="recent-gain-beyond-margin",
        ),
    ],
)
def test_retrain_gate(overrides, promote, reason_part):
    decision = _retrain(**overrides)

    assert decision.promote is promote
    assert reason_part in decision.reason
    frozen = decision.comparisons["frozen_held_out"]
    assert frozen["required_improvement"] == -0.125


def test_retrain_gate_records_both_comparisons():
    decision = _retrain(candidate_old=0.625)

    assert set(decision.comparisons) == {"frozen_held_out", "recent_window"}
    assert decision.comparisons["frozen_held_out"]["improvement"] == -0.125
    assert decision.comparisons["recent_window"]["improvement"] == 0.125


@pytest.mark.parametrize(
    ("candidate_old", "promote"),
    [
        pytest.param(0.875, True, id="better-on-frozen"),
        pytest.param(0.75, False, id="tie-on-frozen"),
        # Within the old-data tolerance, but without a recent window nothing shows it is better.
        pytest.param(0.6875, False, id="slightly-worse-on-frozen"),
    ],
)
@pytest.mark.parametrize(
    "missing", [{"candidate_recent": None, "champion_recent": None}, {"champion_recent": None}]
)
def test_retrain_gate_without_a_recent_window_uses_the_frozen_set(candidate_old, promote, missing):
    decision = _retrain(candidate_old=candidate_old, **missing)

    assert decision.promote is promote
    assert decision.reason.startswith("no recent labelled window")
    assert set(decision.comparisons) == {"frozen_held_out"}


@pytest.mark.parametrize(
    ("candidate_old", "candidate_recent", "promote"),
    [
        pytest.param(10.25, 8.0, True, id="rmse-old-within-tolerance-recent-better"),
        pytest.param(10.75, 8.0, False, id="rmse-old-beyond-tolerance"),
        pytest.param(9.0, 9.5, False, id="rmse-recent-worse"),
    ],
)
def test_retrain_gate_on_an_error_metric(candidate_old, candidate_recent, promote):
    decision = decide_retrain_promotion(
        candidate_old=candidate_old,
        champion_old=10.0,
        candidate_recent=candidate_recent,
        champion_recent=9.0,
        metric="rmse",
        old_data_tolerance=0.05,  # 5% of the champion's frozen RMSE of 10
        min_improvement=0.0,
    )

    assert decision.promote is promote
    assert decision.comparisons["frozen_held_out"]["bound_units"] == "fraction of champion"


@pytest.mark.parametrize("scale", [0.01, 1.0, 50_000.0])
def test_margins_on_an_error_metric_are_fractions_of_the_champion(scale):
    """An RMSE is in the target's units; a margin of 0.02 must mean the same on cents and on
    house prices: 2% of the champion's error."""
    champion = 100.0 * scale

    small_gain = decide_promotion(99.0 * scale, champion, metric="rmse", min_improvement=0.02)
    large_gain = decide_promotion(97.0 * scale, champion, metric="rmse", min_improvement=0.02)

    assert small_gain.promote is False
    assert large_gain.promote is True
    assert large_gain.comparisons["held_out"]["scaled_improvement"] == pytest.approx(0.03)
    assert "2% of the champion's rmse" in large_gain.reason


def test_margins_on_a_bounded_score_stay_absolute():
    decision = decide_promotion(0.80, 0.78, metric="roc_auc", min_improvement=0.01)

    assert decision.promote is True
    assert decision.comparisons["held_out"]["scaled_improvement"] == pytest.approx(0.02)
    assert decision.comparisons["held_out"]["bound_units"] == "absolute"
