"""The promotion gates: when a new version may replace the champion (pure logic, no servers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loopml.gate import (
    GateDecision,
    decide_promotion,
    decide_retrain_promotion,
    improvement,
    metric_direction,
)
from loopml.gate_stats import PairedDifference, drift_confirmed, paired_bootstrap

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


def _pair(candidate: float, champion: float, low: float, high: float, metric="roc_auc"):
    """A paired comparison as the bootstrap would report it (interval in gate units)."""
    from loopml.gate_stats import scaled_improvement

    return PairedDifference(
        metric=metric,
        rows=200,
        candidate=candidate,
        champion=champion,
        gain=scaled_improvement(candidate, champion, metric),
        low=low,
        high=high,
        alpha=0.05,
    )


def _retrain(**overrides) -> GateDecision:
    arguments = {
        "frozen": _pair(0.75, 0.75, -0.03, 0.03),
        "recent": _pair(0.875, 0.75, 0.0625, 0.1875),
        "drift_confirmed": False,
        "min_improvement": 0.0,
        "old_data_tolerance": 0.125,
        "catastrophic_loss": 0.25,
    }
    arguments.update(overrides)
    return decide_retrain_promotion(**arguments)


@pytest.mark.parametrize(
    ("overrides", "promote", "reason_part"),
    [
        pytest.param({}, True, "better with confidence on the recent rows", id="better-recent"),
        pytest.param(
            {"frozen": _pair(0.625, 0.75, -0.2, -0.05)}, True, "promoted", id="old-loss-at-limit"
        ),
        pytest.param(
            {"frozen": _pair(0.5, 0.75, -0.3, -0.2)},
            False,
            "beyond the tolerance",
            id="old-loss-beyond-tolerance-without-drift",
        ),
        pytest.param(
            {"recent": _pair(0.8, 0.75, -0.01, 0.11)},
            False,
            "not better with confidence",
            id="gain-inside-its-interval",
        ),
        pytest.param(
            {"recent": _pair(0.8125, 0.75, 0.02, 0.11), "min_improvement": 0.125},
            False,
            "not better with confidence",
            id="confident-gain-below-margin",
        ),
        pytest.param(
            {"recent": _pair(0.625, 0.75, -0.2, -0.05)}, False, "not better", id="worse-recent"
        ),
    ],
)
def test_retrain_gate(overrides, promote, reason_part):
    decision = _retrain(**overrides)

    assert decision.promote is promote
    assert reason_part in decision.reason


def test_a_difference_inside_its_interval_never_promotes():
    """However large the point gain, an interval reaching zero means noise: refused."""
    for gain in (0.01, 0.05, 0.2):
        decision = _retrain(recent=_pair(0.7 + gain, 0.7, -0.001, 2 * gain))
        assert decision.promote is False
    assert (
        decide_promotion(
            0.9, 0.7, metric="roc_auc", min_improvement=0.0, paired=_pair(0.9, 0.7, -0.01, 0.4)
        ).promote
        is False
    )


def test_a_confirmed_drift_lifts_the_frozen_set_veto():
    frozen = _pair(0.5, 0.75, -0.3, -0.2)  # a loss of 0.25: beyond the 0.125 tolerance

    vetoed = _retrain(frozen=frozen, drift_confirmed=False)
    followed = _retrain(frozen=frozen, drift_confirmed=True, catastrophic_loss=0.3)

    assert vetoed.promote is False
    assert followed.promote is True
    assert "catastrophic-loss guard" in followed.reason


def test_a_catastrophic_loss_still_blocks_after_a_confirmed_drift():
    decision = _retrain(
        frozen=_pair(0.3, 0.8, -0.55, -0.45), drift_confirmed=True, catastrophic_loss=0.3
    )

    assert decision.promote is False
    assert "catastrophic loss" in decision.reason


def test_after_a_confirmed_drift_the_old_rows_may_lose_as_much_as_the_champion_lost_on_the_new():
    """Prices re-set: the champion's RMSE went from 34 (old rows) to 266 (recent rows), a loss
    of 678%. A challenger that learnt the new prices is 69% better on the recent rows and loses
    352% on the old ones: the mirror of the change, not a broken model."""
    frozen = _pair(154.8, 34.26, -4.6, -2.65, metric="rmse")
    recent = _pair(82.37, 266.5, 0.659, 0.72, metric="rmse")

    decision = _retrain(frozen=frozen, recent=recent, drift_confirmed=True, catastrophic_loss=0.5)
    before_the_drift = _retrain(frozen=frozen, recent=recent, drift_confirmed=False)

    assert decision.promote is True, decision.reason
    assert "the champion's own loss on the recent rows" in decision.reason
    assert before_the_drift.promote is False


def test_a_model_that_loses_on_both_is_refused_however_large_the_change():
    frozen = _pair(154.8, 34.26, -4.6, -2.65, metric="rmse")
    recent = _pair(300.0, 266.5, -0.2, -0.05, metric="rmse")  # worse on the new rows too

    decision = _retrain(frozen=frozen, recent=recent, drift_confirmed=True, catastrophic_loss=0.5)

    assert decision.promote is False


def test_each_decision_states_both_comparisons_with_their_intervals():
    decision = _retrain()

    assert "recent rows: roc_auc 0.875 vs 0.75" in decision.reason
    assert "frozen held-out set: roc_auc 0.75 vs 0.75" in decision.reason
    assert decision.reason.count("90% interval") == 2
    assert set(decision.comparisons) == {"frozen_held_out", "recent_window"}
    assert decision.comparisons["recent_window"]["interval_low"] == 0.0625


@pytest.mark.parametrize(
    ("frozen", "promote"),
    [
        pytest.param(_pair(0.875, 0.75, 0.05, 0.2), True, id="better-on-frozen"),
        pytest.param(_pair(0.78, 0.75, -0.02, 0.08), False, id="inside-interval-on-frozen"),
    ],
)
def test_retrain_gate_without_recent_rows_uses_the_frozen_set(frozen, promote):
    decision = _retrain(frozen=frozen, recent=None)

    assert decision.promote is promote
    assert "no recent labelled rows" in decision.reason
    assert set(decision.comparisons) == {"frozen_held_out"}


def test_retrain_gate_on_an_error_metric_uses_fractions_of_the_champion():
    decision = _retrain(
        frozen=_pair(10.75, 10.0, -0.1, -0.05, metric="rmse"),  # 7.5% worse: beyond 5%
        recent=_pair(8.0, 9.0, 0.05, 0.2, metric="rmse"),
        old_data_tolerance=0.05,
    )

    assert decision.promote is False
    assert decision.comparisons["frozen_held_out"]["bound_units"] == "fraction of champion"


def _scores(candidate: np.ndarray, champion: np.ndarray):
    return lambda at: (float(candidate[at].mean()), float(champion[at].mean()))


def test_paired_bootstrap_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(0)
    champion = rng.random(300)
    same = champion + rng.normal(0, 0.05, 300)  # no real difference
    better = champion + 0.05 + rng.normal(0, 0.05, 300)

    noise = paired_bootstrap(_scores(same, champion), 300, metric="accuracy", alpha=0.05)
    gain = paired_bootstrap(_scores(better, champion), 300, metric="accuracy", alpha=0.05)

    assert noise.low < 0 < noise.high and not noise.better_by(0.0)
    assert gain.better_by(0.0) and gain.low < 0.05 < gain.high
    # The same rows give the same interval.
    assert paired_bootstrap(_scores(better, champion), 300, metric="accuracy", alpha=0.05) == gain


def test_paired_bootstrap_on_an_error_metric_is_positive_when_the_candidate_errs_less():
    rng = np.random.default_rng(1)
    champion = 10 + rng.random(200)
    result = paired_bootstrap(_scores(champion * 0.8, champion), 200, metric="rmse", alpha=0.05)

    assert result.gain == pytest.approx(0.2) and result.better_by(0.1)


def test_an_undefined_metric_is_never_better_with_confidence():
    result = paired_bootstrap(lambda at: (math.nan, 0.5), 50, metric="roc_auc", alpha=0.05)

    assert math.isnan(result.low) and not result.better_by(0.0)


@pytest.mark.parametrize(
    ("flags", "confirmed"),
    [
        ([False, False, False], False),
        ([True, False, False], False),  # one odd batch is not a confirmed drift
        ([True, False, True], True),
        ([True, True, False, False, False], False),  # it was, but the traffic settled
        ([False, True, True], True),
    ],
)
def test_drift_is_confirmed_on_two_of_the_last_three_batches(flags, confirmed):
    history = [{"drift_detected": flag, "performance_degraded": False} for flag in flags]

    assert drift_confirmed(history, batches=3, confirmations=2)[0] is confirmed


def test_a_degraded_verdict_confirms_the_change():
    history = [{"drift_detected": False, "performance_degraded": True}]

    assert drift_confirmed(history, batches=3, confirmations=2)[0] is True


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
