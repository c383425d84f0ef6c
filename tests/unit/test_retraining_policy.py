"""Retraining data policies, the policy backtest, claims and the cooldown (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from loopml import claims, ledger
from loopml.data_policies import (
    PolicyData,
    choose_policy,
    policy_data,
    recency_weights,
    run_backtest,
    split_newest,
)

COLUMNS = ["x", "y"]


def _frame(start: int, rows: int) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(start, start + rows, dtype=float), "y": 0})


def test_recency_weights_halve_every_half_life_and_keep_a_mean_of_one():
    weights = recency_weights(reference_rows=4, recent_rows=4, half_life_rows=2)

    assert weights.mean() == pytest.approx(1.0)
    assert weights[-1] / weights[-3] == pytest.approx(2.0)  # newest vs two rows older
    assert len(set(weights[:4])) == 1 and weights[0] < weights[4]  # reference: oldest of all


def test_recent_only_needs_enough_rows():
    reference, recent = _frame(0, 10), _frame(100, 5)

    assert (
        policy_data("recent_only", reference, recent, half_life_rows=5, min_recent_rows=6) is None
    )
    data = policy_data("recent_only", reference, recent, half_life_rows=5, min_recent_rows=5)
    assert data is not None and len(data.frame) == 5 and data.weights is None
    weighted = policy_data(
        "recency_weighted", reference, recent, half_life_rows=5, min_recent_rows=5
    )
    assert len(weighted.frame) == 15 and len(weighted.weights) == 15


@pytest.mark.parametrize(
    ("scores", "metric", "chosen"),
    [
        ({"all_history": 0.6, "recent_only": 0.7}, "roc_auc", "recent_only"),
        ({"all_history": 5.0, "recent_only": 7.0}, "rmse", "all_history"),
        ({"all_history": 0.7, "recent_only": 0.7}, "roc_auc", "all_history"),  # tie: earlier
        ({"all_history": float("nan"), "recent_only": 0.5}, "roc_auc", "recent_only"),
    ],
)
def test_the_best_backtest_score_wins(scores, metric, chosen):
    assert choose_policy(["all_history", "recency_weighted", "recent_only"], scores, metric) == (
        chosen
    )


def test_the_backtest_fits_on_older_rows_and_scores_on_the_newest_without_copies():
    reference = pd.concat([_frame(0, 50), _frame(190, 5)], ignore_index=True)  # 5 copies
    older, newest = _frame(100, 70), _frame(170, 30)  # rows 100..169, then 170..199
    seen: dict[str, tuple[set, set]] = {}

    def fit_and_score(data: PolicyData, scored: pd.DataFrame) -> float:
        seen[data.policy] = (set(data.frame["x"]), set(scored["x"]))
        return {"all_history": 0.6, "recency_weighted": 0.65, "recent_only": 0.8}[data.policy]

    choice = run_backtest(
        ["all_history", "recency_weighted", "recent_only"],
        reference,
        older,
        newest,
        COLUMNS,
        metric="roc_auc",
        half_life_rows=20,
        min_recent_rows=50,
        fit_and_score=fit_and_score,
    )

    assert choice.policy == "recent_only"
    assert choice.backtest_rows == 30
    for fitted, scored in seen.values():
        assert scored == set(np.arange(170.0, 200.0))
        assert not fitted & scored  # no row (nor a copy of it) on both sides
    assert choice.training_rows == {"all_history": 120, "recency_weighted": 120, "recent_only": 70}
    assert "recent_only (backtest roc_auc" in choice.text()


def test_the_newest_rows_alternate_between_backtest_and_gate():
    newest = _frame(0, 100)
    newest.loc[99, "x"] = 50.0  # a copy of a row that may land on the other side

    backtest, gate = split_newest(
        newest, COLUMNS, backtest_share=0.5, min_backtest_rows=30, min_gate_rows=30
    )

    assert 45 <= len(backtest) <= 50 and len(gate) == 50
    assert not set(backtest["x"]) & set(gate["x"])
    # Both halves span the whole newest block: neither is older than the other.
    assert backtest["x"].min() < 5 and gate["x"].max() >= 98
    none, everything = split_newest(
        newest, COLUMNS, backtest_share=0.5, min_backtest_rows=60, min_gate_rows=30
    )
    assert none.empty and len(everything) == 100


def test_too_few_recent_rows_fall_back_to_the_first_policy_that_applies():
    choice = run_backtest(
        ["recent_only", "all_history"],
        _frame(0, 50),
        _frame(100, 20),
        _frame(0, 0),
        COLUMNS,
        metric="roc_auc",
        half_life_rows=20,
        min_recent_rows=50,
        fit_and_score=lambda data, newest: pytest.fail("nothing to backtest on"),
    )

    assert choice.policy == "all_history" and not choice.scores
    assert "too few recent labelled rows" in choice.note


def _started(batch_id: str, run_id: str, event: str | None = None, at: str | None = None):
    entry = {
        "action": "retrain_started",
        "batch_id": batch_id,
        "trigger": {"flow_run_id": run_id, "event": event, "batch_id": batch_id},
    }
    return {**entry, "at": at} if at else entry


def test_a_claim_holds_while_its_run_lives_or_after_it_finished():
    entries = [
        _started("b1", "r1"),
        {"action": "refused", "trigger": {"flow_run_id": "r1"}},
        _started("b2", "r2"),
        _started("b3", "r3"),
        {"action": "retrain_failed", "flow_run_id": "r3"},
    ]

    def live(run_id: str) -> bool:
        return run_id == "r2"

    assert claims.claimed_by(entries, "b1", live)  # finished
    assert claims.claimed_by(entries, "b2", live)  # still running
    assert not claims.claimed_by(entries, "b3", live)  # failed
    assert not claims.claimed_by(entries, "b2", lambda _: False)  # killed: released


def test_the_lock_holder_releases_the_claims_of_dead_runs(tmp_path):
    ledger_dir, locks = tmp_path / "ledger", tmp_path / "locks"
    ledger.append_entry(ledger_dir, "p", _started("b1", "killed-run"))

    with claims.retraining_lock(locks, "p"):
        assert claims.release_dead_claims(ledger_dir, locks, "p") == []  # a retraining runs
    released = claims.release_dead_claims(ledger_dir, locks, "p")

    assert [e["flow_run_id"] for e in released] == ["killed-run"]
    entries = ledger.read_entries(ledger_dir, "p")
    assert not claims.claimed_by(entries, "b1", lambda _: True)
    assert claims.release_dead_claims(ledger_dir, locks, "p") == []  # released once


def test_the_cooldown_is_read_from_the_ledger():
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    recent = (now - timedelta(seconds=100)).isoformat()
    entries = [_started("b1", "r1", event="loopml.drift.detected", at=recent)]

    assert claims.cooldown_left(entries, now, 300) == pytest.approx(200)
    assert claims.cooldown_left(entries, now, 60) == 0
    manual = [_started("b1", "r1", at=recent)]
    assert claims.cooldown_left(manual, now, 300) == 0  # only event-triggered runs open one


def test_new_labelled_evidence_of_degradation_passes_the_cooldown():
    verdicts = [{"batch_id": "b2", "performance_degraded": True}, {"batch_id": "b3"}]

    assert claims.new_evidence("b2", "loopml.drift.detected", verdicts)
    assert claims.new_evidence("b9", "loopml.performance.degraded", verdicts)
    assert not claims.new_evidence("b3", "loopml.drift.detected", verdicts)
    assert not claims.new_evidence(None, "loopml.performance.degraded", verdicts)


def test_only_the_gate_promotion_behind_the_current_champion_may_be_rolled_back():
    gate = {"action": "promoted", "version": "3", "previous_champion": "2", "decision": {}}
    by_hand = {"action": "promoted", "version": "3", "previous_champion": "2", "reason": "x"}
    back = {"action": "rolled_back", "version": "2", "previous_champion": "3"}

    assert claims.promotion_to_check([gate], "3") == gate
    assert claims.promotion_to_check([gate, {"action": "refused"}], "3") == gate
    assert claims.promotion_to_check([by_hand], "3") is None  # a person decided
    assert claims.promotion_to_check([gate, back], "2") is None  # already rolled back
    assert claims.promotion_to_check([{**gate, "previous_champion": None}], "3") is None
