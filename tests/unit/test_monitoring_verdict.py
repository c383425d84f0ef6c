"""The typed monitoring verdict: one object, serialised once, with the --json keys unchanged."""

from __future__ import annotations

import json

from loopml.monitoring import MonitoringVerdict, record_result

# The keys `loopml monitor --json`, latest.json and history.jsonl had as a hand-built dict.
JSON_KEYS = {
    "project", "batch_id", "checked_at", "model_version", "reference", "rows", "status",
    "drift_detected", "drift_share", "weighted_drift_share", "drifted_columns",
    "drifted_columns_detail", "drifted_column_scores", "columns", "prediction_drift",
    "performance", "performance_degraded", "labelled_rows_kept", "report_path", "evidently_run",
    "rolled_back",  # issue 12: an automatic rollback this batch caused, else null
    "reason", "links",  # issue 14: the rule that fired, and the UI pages that show the batch
}  # fmt: skip


def _verdict(**changes) -> MonitoringVerdict:
    column = {"column": "tenure", "score": 0.4, "method": "wasserstein", "p_value": 0.001}
    values = {
        "project": "churn",
        "batch_id": "b1",
        "checked_at": "2026-12-03T10:00:00+00:00",
        "model_version": "2",
        "reference": "models:/churn/2 training data",
        "rows": 500,
        "drift": {
            "status": "drift",
            "drift_detected": True,
            "drift_share": 0.5,
            "weighted_drift_share": 0.7,
            "drifted_columns": ["tenure"],
            "columns": {"tenure": column, "plan": {**column, "column": "plan", "score": 0.01}},
        },
        "prediction_drift": {"drifted": True},
        "performance": {"metric": "roc_auc", "degraded": True, "drop": 0.1,
                        "current": {"roc_auc": 0.7}},
        "labelled_rows_kept": 500,
        "report_path": "/tmp/report.html",
        "evidently_run": None,
    }  # fmt: skip
    return MonitoringVerdict(**{**values, **changes})


def test_to_dict_keeps_the_json_keys_and_round_trips(tmp_path):
    verdict = _verdict()

    result = verdict.to_dict()
    latest = json.loads(record_result(tmp_path, verdict).read_text())

    assert set(result) == JSON_KEYS
    assert latest == json.loads(json.dumps(result))
    assert result["drifted_columns_detail"] == [verdict.drift["columns"]["tenure"]]
    assert result["drifted_column_scores"] == {"tenure": 0.4}
    assert result["performance_degraded"] is True
    assert (tmp_path / "churn" / "history.jsonl").read_text().count("\n") == 1


def test_event_payloads_and_the_place_for_estimated_performance():
    verdict = _verdict(estimated_performance={"estimated_roc_auc": 0.8})

    assert verdict.event_payload()["drifted_columns"] == ["tenure"]
    assert "metric" not in verdict.event_payload()
    assert verdict.degradation_payload()["current"] == 0.7
    assert verdict.to_dict()["estimated_roc_auc"] == 0.8
    assert _verdict(performance=None).performance_degraded is False
