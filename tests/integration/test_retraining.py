"""Retraining, for real: a drifted labelled batch is monitored (its rows are kept), then the
retraining flow trains a challenger on reference + recent data and the two-sided gate decides.

The batch is a market shift: customers drawn with a bias towards month-to-month contracts,
mailed-check payments and short tenures (covariate drift, the true relation intact), and
mailed-check payers now churn 80 % of the time (a relation the champion never saw). The
retraining backtests its data policies, and the challenger is better with confidence on the
newest labelled rows; the batch's degraded verdict confirms the change, so the frozen held-out set
only guards against a catastrophic loss, and the challenger is promoted; with an impossible
margin the next one is refused.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loopml import events
from loopml.errors import ValidationFailed
from tests.conftest import last_json, run_cli
from tests.integration.maintenance_fixtures import (
    MaintainedProject,
    maintained_project,
    shifted_batch,
)

NAME = "retrain_telco"
SHIFT_ROWS = 600


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server, telco_frame) -> MaintainedProject:
    with maintained_project(
        tmp_path_factory.mktemp("retraining"), prefect_server.api_url, NAME, telco_frame
    ) as trained:
        yield trained


def market_shift(pool: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    weights = (
        np.where(pool["contract"] == "Month-to-month", 4.0, 1.0)
        * np.where(pool["payment_method"] == "Mailed check", 4.0, 1.0)
        * np.where(pool["tenure"] < 24, 2.0, 1.0)
    )
    batch = pool.sample(n=rows, weights=weights, random_state=seed).reset_index(drop=True)
    mailed = batch["payment_method"] == "Mailed check"
    rng = np.random.default_rng(seed)
    batch.loc[mailed, "churn"] = np.where(rng.random(int(mailed.sum())) < 0.8, "Yes", "No")
    return batch


def _retrain(project: MaintainedProject, batch_id: str | None) -> dict:
    from flows.retraining import retrain_flow

    return retrain_flow(
        project=NAME, project_dir=str(project.project_dir), batch_id=batch_id, trials=3
    )


@pytest.fixture(scope="module")
def shifted(project) -> dict:
    """The market-shift batch, labelled, monitored once (so its rows are kept)."""
    from flows.monitoring import monitor_flow

    source = project.write(market_shift(project.pool, SHIFT_ROWS, seed=3), "market-shift.csv")
    result = monitor_flow(project=NAME, data=str(source), project_dir=str(project.project_dir))
    return {"source": source, "result": result, "batch_id": result["batch_id"]}


@pytest.fixture(scope="module")
def first_retraining(project, shifted) -> dict:
    versions_before = project.versions()
    ledger_before = len(project.ledger())
    result = _retrain(project, shifted["batch_id"])
    return {
        "result": result,
        "versions_before": versions_before,
        "versions_after": project.versions(),
        "entries": project.ledger()[ledger_before:],
    }


def test_drifted_labelled_batch_is_flagged_and_kept_for_retraining(project, shifted):
    result = shifted["result"]

    assert result["drift_detected"] is True
    assert {"contract", "payment_method", "tenure"} <= set(result["drifted_columns"])
    assert result["labelled_rows_kept"] == SHIFT_ROWS
    kept = project.label_store().labelled_batches()
    assert len(kept) == SHIFT_ROWS
    # The champion does badly on the new relation: its recent performance has degraded.
    assert result["performance_degraded"] is True


@pytest.mark.slow
def test_retraining_registers_a_new_version_for_the_trigger_batch(
    project, shifted, first_retraining
):
    result = first_retraining["result"]
    batch_id = shifted["batch_id"]

    assert result["skipped"] is False
    assert first_retraining["versions_before"] == ["1"]
    assert first_retraining["versions_after"] == ["1", "2"]
    assert result["version"] == "2" and result["batch_id"] == batch_id
    assert result["champion_before"] == "1"
    assert result["recent_window_rows"] == SHIFT_ROWS
    # Reference (the champion's 1,600 training rows) + the recent rows not held back to judge,
    # less the few that are exact copies (features and target) of judged rows: Telco has some.
    # The newest 30 % of the window: half judges (the gate), half backtests the data policies
    # and then trains, like the older rows.
    newest = int(SHIFT_ROWS * 0.3)
    assert result["recent_evaluation_rows"] == newest - newest // 2
    learnable = SHIFT_ROWS - result["recent_evaluation_rows"]
    assert learnable - 12 <= result["recent_training_rows"] <= learnable
    # The reference loses the few rows that copy a judged recent row.
    assert 1_590 <= result["reference_rows"] <= 1_600
    policy = result["data_policy"]
    assert policy["policy"] in policy["scores"] and policy["backtest_rows"] > 0
    expected_rows = {
        "all_history": result["reference_rows"] + result["recent_training_rows"],
        "recency_weighted": result["reference_rows"] + result["recent_training_rows"],
        "recent_only": result["recent_training_rows"],
    }
    assert result["training_rows"] == expected_rows[policy["policy"]]
    tags = project.version_tags("2")
    assert tags["loopml.data_policy"] == policy["policy"]
    assert tags["loopml.batch_id"] == batch_id
    assert tags["loopml.parent_version"] == "1"
    assert tags["loopml.trigger"] == "event"


@pytest.mark.slow
def test_ledger_records_both_comparisons_and_the_trigger_batch(shifted, first_retraining):
    batch_id = shifted["batch_id"]
    entries = first_retraining["entries"]

    actions = [entry["action"] for entry in entries]
    assert actions == ["retrain_started", "registered", "promoted"]
    started, registered, decided = entries
    assert started["batch_id"] == batch_id
    assert registered["version"] == "2" and registered["trigger"]["batch_id"] == batch_id
    assert decided["version"] == "2" and decided["trigger"]["batch_id"] == batch_id
    assert decided["previous_champion"] == "1"
    comparisons = decided["decision"]["comparisons"]
    assert set(comparisons) == {"frozen_held_out", "recent_window"}
    assert registered["data_policy"] == decided["data_policy"]
    assert decided["data_policy"]["policy"] == first_retraining["result"]["data_policy"]["policy"]
    for comparison in comparisons.values():
        assert {"candidate", "champion", "improvement", "interval_low"} <= set(comparison)
        assert comparison["improvement"] == pytest.approx(
            comparison["candidate"] - comparison["champion"]
        )
    assert comparisons["recent_window"]["interval_low"] > 0  # better with confidence
    # The batch's degraded verdict confirmed the change: the frozen set only guards against
    # a catastrophic loss now.
    assert "drift confirmed" in decided["reason"]
    assert comparisons["frozen_held_out"]["improvement"] >= -0.5
    assert first_retraining["result"]["comparisons"] == comparisons


@pytest.mark.slow
def test_better_challenger_is_promoted(project, shifted, first_retraining):
    result = first_retraining["result"]

    assert result["promoted"] is True, result["reason"]
    assert str(project.champion().version) == "2"
    # The new champion really is better on the new relation than the old one.
    assert result["recent_metrics"]["roc_auc"] > result["comparisons"]["recent_window"]["champion"]
    event = project.wait_for_event(
        events.MODEL_PROMOTED, where=lambda e: e["payload"].get("version") == "2"
    )
    assert event["payload"]["previous_champion"] == "1"
    assert event["payload"]["batch_id"] == shifted["batch_id"]


@pytest.mark.slow
def test_status_json_shows_the_retraining(project, shifted, first_retraining):
    completed = run_cli("status", NAME, "--json", cwd=project.project_dir)

    assert completed.returncode == 0, completed.stderr
    status = last_json(completed.stdout)
    assert status["champion"]["version"] == "2"
    assert status["versions"] == first_retraining["versions_after"]
    promoted = [e for e in status["history"] if e["action"] == "promoted" and e["version"] == "2"]
    assert promoted and promoted[-1]["trigger"]["batch_id"] == shifted["batch_id"]
    assert set(promoted[-1]["decision"]["comparisons"]) == {"frozen_held_out", "recent_window"}
    assert status["last_monitoring"]["batch_id"] == shifted["batch_id"]


@pytest.mark.slow
def test_the_same_batch_never_causes_a_second_retraining(project, shifted, first_retraining):
    versions = project.versions()

    again = _retrain(project, shifted["batch_id"])

    assert again["skipped"] is True
    assert shifted["batch_id"] in again["reason"]
    assert project.versions() == versions
    assert str(project.champion().version) == "2"
    started = [
        e
        for e in project.ledger()
        if e["action"] == "retrain_started" and e["batch_id"] == shifted["batch_id"]
    ]
    assert len(started) == 1


@pytest.mark.slow
def test_worse_challenger_is_refused_and_the_champion_stays(project, first_retraining):
    champion_before = str(project.champion().version)
    versions_before = project.versions()

    def impossible_margin(raw: dict) -> None:
        raw["gate"]["min_improvement"] = 0.9

    with project.config_changed(impossible_margin):
        result = _retrain(project, "refusal-check")

    assert result["skipped"] is False and result["promoted"] is False
    new_version = result["version"]
    assert project.versions() == [*versions_before, new_version]
    assert str(project.champion().version) == champion_before
    decided = project.ledger()[-1]
    assert decided["action"] == "refused" and decided["version"] == new_version
    assert decided["previous_champion"] == champion_before
    assert decided["reason"] == result["reason"]
    assert set(decided["decision"]["comparisons"]) == {"frozen_held_out", "recent_window"}
    assert project.version_tags(new_version)["loopml.gate"] == "refused"
    assert str(project.champion("challenger").version) == new_version


@pytest.mark.slow
def test_a_promotion_that_hurts_on_new_labelled_rows_is_rolled_back(project, first_retraining):
    """Right after the gate tests, while the last alias move is the first retraining's
    promotion (later retrainings may promote, or their monitoring roll back, by what their
    search found on this machine; none of the tests after this one depends on which version is
    champion). New labelled rows on which the version the
    champion replaced is right by construction (their labels are its own decisions): the
    champion is worse with confidence there, so monitoring them rolls it back by itself."""
    from flows.monitoring import monitor_flow
    from loopml.claims import promotion_to_check
    from loopml.comparison import load_scorer, model_outputs

    runtime = project.runtime()
    champion = str(project.champion().version)
    promotion = promotion_to_check(project.ledger(), champion)
    assert promotion is not None and promotion["action"] == "promoted"
    previous = str(promotion["previous_champion"])
    batch = project.batch(400, seed=97, with_target=True)
    config = runtime.config
    said = model_outputs(load_scorer(runtime.mlflow, NAME, previous, config), batch, config)
    batch["churn"] = np.where(said.predicted, config.positive_label, "No")
    source = project.write(batch, "previous-was-right.csv")

    result = monitor_flow(project=NAME, data=str(source), project_dir=str(project.project_dir))

    rolled = result["rolled_back"]
    assert rolled is not None and rolled["action"] == "rolled_back"
    assert (rolled["version"], rolled["previous_champion"]) == (previous, champion)
    assert "worse with confidence" in rolled["reason"]
    assert str(project.champion().version) == previous
    assert project.ledger()[-1]["action"] == "rolled_back"
    event = project.wait_for_event(
        events.MODEL_ROLLED_BACK, where=lambda e: e["payload"].get("version") == previous
    )
    assert event["payload"]["previous_champion"] == champion


def test_a_second_retraining_is_refused_while_one_holds_the_lock(project):
    from tasks.retraining import RetrainingBusy, retraining_lock

    versions = project.versions()
    entries = len(project.ledger())

    busy = pytest.raises(RetrainingBusy, match=f"retraining of project '{NAME}' is already")
    with retraining_lock(project.runtime()), busy:
        _retrain(project, "while-locked")

    assert project.versions() == versions
    assert len(project.ledger()) == entries  # nothing claimed: the batch can still retrain later


def test_a_retraining_without_a_trigger_batch_gets_past_its_trigger(project):
    """``loopml retrain NAME`` and the weekly schedule pass no batch id. With the lock held the
    flow must stop at the lock (RetrainingBusy), i.e. after it worked out what started it."""
    from tasks.retraining import RetrainingBusy, retraining_lock

    with retraining_lock(project.runtime()), pytest.raises(RetrainingBusy):
        _retrain(project, None)


@pytest.mark.slow
def test_a_failed_retraining_does_not_use_up_its_trigger_batch(project):
    suite_path = project.project_dir / "expectations" / f"{NAME}.json"
    suite_text = suite_path.read_text()
    suite = json.loads(suite_text)
    for expectation in suite["expectations"]:
        if (
            expectation["type"] == "expect_column_values_to_be_between"
            and expectation["kwargs"]["column"] == "monthly_charges"
        ):
            expectation["kwargs"].update(max_value=50.0, mostly=1.0)
    suite_path.write_text(json.dumps(suite))
    try:
        with pytest.raises(ValidationFailed):
            _retrain(project, "suite-refused")
    finally:
        suite_path.write_text(suite_text)
    # In the Prefect UI the run is in its own named state, as train/validate/score runs are.
    (refused,) = _retrain_runs(project, "suite-refused")
    assert (refused.state_name, refused.state_type.value) == ("Quarantined", "FAILED")
    assert "quarantined" in refused.state.message

    retried = _retrain(project, "suite-refused")

    assert retried["skipped"] is False
    assert sorted(run.state_name for run in _retrain_runs(project, "suite-refused")) == [
        "Completed",
        "Quarantined",
    ]


def _retrain_runs(project: MaintainedProject, batch_id: str) -> list:
    """The retrain flow runs of ``batch_id`` on the project's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))
    return [run for run in runs if run.parameters.get("batch_id") == batch_id]


@pytest.mark.slow
def test_a_price_shift_drift_leads_to_a_retrained_version(project):
    """Prices x1.3, shorter tenures, monthly contracts: a drift the loop must close on. The
    batch is big enough that its rows dominate the recent window the challenger learns from."""
    from flows.monitoring import monitor_flow

    frame = shifted_batch(project.batch(1_200, seed=71, with_target=True), seed=71)
    source = project.write(frame, "price-shift.csv")
    monitored = monitor_flow(project=NAME, data=str(source), project_dir=str(project.project_dir))
    assert monitored["drift_detected"] is True
    assert "monthly_charges" in monitored["drifted_columns"]
    versions = project.versions()

    result = _retrain(project, monitored["batch_id"])

    assert result["skipped"] is False
    assert project.versions() == [*versions, result["version"]]
