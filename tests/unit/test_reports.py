"""Evidently reports and the Evidently workspace."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopml.data import bundled_sample_path
from loopml.reports import (
    add_to_workspace,
    build_monitoring_report,
    evidently_column_drift,
    save_report_html,
    snapshot_tags,
)

os.environ.setdefault("DO_NOT_TRACK", "1")

NUMERIC = ["tenure", "monthly_charges", "total_charges"]
CATEGORICAL = ["contract", "internet_service", "payment_method", "paperless_billing"]


@pytest.fixture(scope="module")
def scored_telco() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Telco with a rule-based 'model' (prediction + probability); the current half is shifted."""
    frame = pd.read_csv(bundled_sample_path()).sample(n=3000, random_state=3).reset_index(drop=True)
    probability = 1 / (1 + np.exp(0.08 * (frame["tenure"] - 20)))
    frame["churn_probability"] = probability.round(4)
    frame["churn_predicted"] = np.where(probability > 0.5, "Yes", "No")
    reference = frame.iloc[:1500].reset_index(drop=True)
    current = frame.iloc[1500:].reset_index(drop=True)
    current["monthly_charges"] = current["monthly_charges"] * 1.5
    return reference, current


@pytest.fixture(scope="module")
def classification_snapshot(scored_telco):
    reference, current = scored_telco
    return build_monitoring_report(
        reference,
        current,
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        target="churn",
        prediction="churn_predicted",
        probability="churn_probability",
        task="classification",
        positive_label="Yes",
    )


def test_report_html_names_the_columns(classification_snapshot, tmp_path) -> None:
    path = save_report_html(classification_snapshot, tmp_path / "reports" / "batch.html")
    html = path.read_text()
    assert path.stat().st_size > 10_000
    for column in NUMERIC + CATEGORICAL:
        assert column in html


def test_evidently_own_drift_results_are_extracted(classification_snapshot) -> None:
    drift = evidently_column_drift(classification_snapshot)
    assert set(drift["columns"]) == set(NUMERIC + CATEGORICAL)
    assert drift["columns"]["monthly_charges"]["drifted"]
    assert drift["columns"]["monthly_charges"]["method"] == "Wasserstein distance (normed)"
    assert not drift["columns"]["contract"]["drifted"]
    dataset = drift["dataset"]
    drifted = sum(column["drifted"] for column in drift["columns"].values())
    assert dataset["count"] == drifted
    assert dataset["share"] == pytest.approx(drifted / 7)
    assert dataset["drift_detected"] == (dataset["share"] >= 0.5)


def test_classification_preset_runs_when_labels_exist(classification_snapshot) -> None:
    names = [metric["metric_name"] for metric in classification_snapshot.dict()["metrics"]]
    assert any(name.startswith("RocAuc") for name in names)
    assert any(name.startswith("Accuracy") for name in names)


def _performance(snapshot) -> dict[str, float]:
    return {
        metric["metric_name"].split("(")[0]: metric["value"]
        for metric in snapshot.dict()["metrics"]
        if metric["metric_name"].startswith(("Accuracy(", "RocAuc(", "F1Score("))
    }


@pytest.mark.parametrize(
    ("coding", "positive_label"),
    [
        ({"Yes": True, "No": False}, True),  # a True/False target (CSV or Parquet bool)
        ({"Yes": 1, "No": 0}, 1),
        ({"Yes": 2, "No": 1}, 2),
        ({"Yes": 1.0, "No": 0.0}, 1),  # an integer label read as float (a CSV with nulls)
    ],
    ids=["bool", "0/1", "1/2", "float"],
)
def test_binary_performance_is_reported_whatever_the_labels_type(
    scored_telco, coding, positive_label
) -> None:
    """Evidently reads a score against text labels only; other labels reach it as text, so the
    report has the same performance as with Yes/No (True/False crashed the monitor command)."""
    reference, current = scored_telco
    columns = {"numeric_columns": NUMERIC, "categorical_columns": CATEGORICAL}
    labels = {
        "target": "churn",
        "prediction": "churn_predicted",
        "probability": "churn_probability",
    }
    as_text = build_monitoring_report(
        reference, current, **columns, **labels, positive_label="Yes", sample_rows=600
    )
    recoded = [
        frame.assign(
            churn=frame["churn"].map(coding), churn_predicted=frame["churn_predicted"].map(coding)
        )
        for frame in (reference, current)
    ]
    snapshot = build_monitoring_report(
        *recoded, **columns, **labels, positive_label=positive_label, sample_rows=600
    )

    expected = _performance(as_text)
    assert set(expected) == {"Accuracy", "RocAuc", "F1Score"}
    assert _performance(snapshot) == pytest.approx(expected)


def test_a_column_without_values_on_one_side_is_left_out_of_the_report(scored_telco) -> None:
    """Evidently raises on an all-empty column; loopml's verdict judges it on its missing share
    (tests/unit/test_drift.py), the report shows the other columns."""
    reference, current = scored_telco
    snapshot = build_monitoring_report(
        reference,
        current.assign(tenure=np.nan),  # numbers that arrived as unparseable text
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        sample_rows=600,
    )

    assert set(evidently_column_drift(snapshot)["columns"]) == set(NUMERIC + CATEGORICAL) - {
        "tenure"
    }


def test_drift_only_without_labels_and_sampled_sides(scored_telco) -> None:
    reference, current = scored_telco
    snapshot = build_monitoring_report(
        reference,
        current.drop(columns=["churn"]),
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        target="churn",
        prediction="churn_predicted",
        positive_label="Yes",
        sample_rows=800,
    )
    content = snapshot.dict()
    names = [metric["metric_name"] for metric in content["metrics"]]
    assert not any(name.startswith("Accuracy") for name in names)
    # 800 sampled reference rows put Evidently in its small-reference regime (tests, not distances).
    methods = {c["method"] for c in evidently_column_drift(snapshot)["columns"].values()}
    assert methods <= {"K-S p_value", "chi-square p_value", "Z-test p_value"}


def test_regression_report(scored_telco) -> None:
    reference, current = scored_telco
    reference = reference.assign(predicted_charges=reference["total_charges"] * 0.9)
    current = current.assign(predicted_charges=current["total_charges"] * 1.1)
    snapshot = build_monitoring_report(
        reference,
        current,
        numeric_columns=["tenure", "monthly_charges"],
        categorical_columns=["contract"],
        target="total_charges",
        prediction="predicted_charges",
        task="regression",
    )
    names = [metric["metric_name"] for metric in snapshot.dict()["metrics"]]
    assert any("MAE" in name or "MeanError" in name for name in names), names


def test_workspace_keeps_one_project_and_every_run(classification_snapshot, tmp_path) -> None:
    from evidently.ui.workspace import Workspace

    options = {"prediction_column": "churn_probability", "performance_metric": "roc_auc"}
    first = add_to_workspace(tmp_path / "evidently", "churn", classification_snapshot, **options)
    second = add_to_workspace(tmp_path / "evidently", "churn", classification_snapshot, **options)
    workspace = Workspace(str(tmp_path / "evidently"))
    projects = workspace.search_project("churn")
    assert len(projects) == 1
    panels = projects[0].dashboard.model().panels  # created with the project, not per run
    assert [panel.title for panel in panels] == [
        "Drift share",
        "Weighted drift share",
        "Drifted columns",
        "Prediction drift",
        "Performance: roc_auc",
        "Performance: roc_auc (estimated)",
    ]
    assert panels[4].values[0].metric == "evidently:metric_v2:RocAuc"
    runs = {str(run) for run in workspace.list_runs(projects[0].id)}
    assert runs == {first.run_id, second.run_id}
    assert first.project_id == second.project_id == str(projects[0].id)


def test_a_run_is_added_without_reading_the_runs_already_stored(
    classification_snapshot, tmp_path
) -> None:
    """Adding a batch's run reads no stored snapshot: Evidently's ``Workspace.create`` parses
    every one (4 s and 278 MB at 46 batches, measured) and refuses a malformed one, so one bad
    file would stop every later batch from reaching the dashboard."""
    first = add_to_workspace(tmp_path / "first", "churn", classification_snapshot)
    path = Path(shutil.copytree(tmp_path / "first", tmp_path / "evidently"))  # opened afresh
    snapshots = path / first.project_id / "snapshots"
    (snapshots / f"{uuid.uuid4()}.json").write_text('{"not": "a snapshot"}')

    second = add_to_workspace(path, "churn", classification_snapshot)

    assert second.project_id == first.project_id
    assert (snapshots / f"{second.run_id}.json").is_file()


def _dashboard_series(workspace_path, project: str, panel_title: str) -> dict[str, list[float]]:
    """A panel's points as the Evidently UI computes them (its own local data storage)."""
    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local.base import InMemoryDataStorage
    from evidently.ui.workspace import Workspace

    (found,) = Workspace(str(workspace_path)).search_project(project)
    panels = found.dashboard.model().panels
    panel = next(panel for panel in panels if panel.title == panel_title)
    filters = [
        SeriesFilter(tags=[], metadata={}, metric=value.metric, metric_labels=value.metric_labels)
        for value in panel.values
    ]
    project_id = uuid.UUID(str(found.id))
    response = asyncio.run(
        InMemoryDataStorage(str(workspace_path)).get_data_series(project_id, filters, None, None)
    )
    return {series.params["column"]: series.values for series in response.series}


def test_estimated_performance_has_its_panel_with_a_point_per_batch(scored_telco, tmp_path):
    reference, current = scored_telco
    workspace = tmp_path / "evidently"
    # A project made before the estimated panel existed (no performance metric then).
    add_to_workspace(workspace, "churn", _drift_only(reference, current, {}))
    batches = [(0.81, 0.78, 0.84), (0.74, 0.70, 0.78)]
    for value, lower, upper in batches:
        estimates = {
            "estimated_roc_auc": value,
            "estimated_roc_auc_lower": lower,
            "estimated_roc_auc_upper": upper,
        }
        snapshot = _drift_only(reference, current, estimates)
        add_to_workspace(
            workspace, "churn", snapshot, prediction_column=None, performance_metric="roc_auc"
        )

    series = _dashboard_series(workspace, "churn", "Performance: roc_auc (estimated)")

    assert set(series) == {
        "estimated_roc_auc",
        "estimated_roc_auc_lower",
        "estimated_roc_auc_upper",
    }
    assert series["estimated_roc_auc"] == pytest.approx([b[0] for b in batches])
    assert series["estimated_roc_auc_lower"] == pytest.approx([b[1] for b in batches])
    assert series["estimated_roc_auc_upper"] == pytest.approx([b[2] for b in batches])
    # The estimate is reported, not tested: Evidently's default test would invent its own rule.
    tests = snapshot.dict()["tests"]
    assert not [t for t in tests if "estimated_roc_auc" in t["metric_config"]["params"].values()]


def test_the_weighted_drift_share_has_its_panel_with_a_point_per_batch(scored_telco, tmp_path):
    reference, current = scored_telco
    workspace = tmp_path / "evidently"
    shares = [0.12, 0.55, 0.31]
    for share in shares:
        snapshot = _drift_only(reference, current, {"weighted_drift_share": share})
        add_to_workspace(workspace, "churn", snapshot, performance_metric="roc_auc")

    series = _dashboard_series(workspace, "churn", "Weighted drift share")

    assert series == {"weighted_drift_share": pytest.approx(shares)}


def _drift_only(reference, current, estimates):
    return build_monitoring_report(
        reference,
        current,
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        probability="churn_probability",
        estimates=estimates,
        reference_estimates={"estimated_roc_auc": 0.83},
    )


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ({"drift_detected": True, "performance_degraded": True}, "verdict:drift+degraded"),
        ({"drift_detected": False, "estimated_degraded": True}, "verdict:estimated-degraded"),
        ({"drift_detected": True, "estimated_degraded": False}, "verdict:drift"),
        ({"status": "no_drift"}, "verdict:ok"),
        ({"status": "insufficient_data"}, "verdict:insufficient-data"),
    ],
)
def test_snapshot_tags_name_batch_model_and_verdict(verdict, expected) -> None:
    tags = snapshot_tags({"batch_id": "b1", "model_version": "3", **verdict})

    assert tags == ["batch:b1", "model:v3", expected]


def test_verdict_reason_names_the_rule_that_fired() -> None:
    from loopml.monitoring import verdict_reason

    limits = {"drift_share": 0.15, "weighted_drift_share": 0.3}
    weighted = {"status": "drift", "drift_share": 0.1053, "weighted_drift_share": 0.555}
    assert verdict_reason(weighted, None, **limits) == "weighted drift share 0.56 >= 0.30"
    quiet = {"status": "no_drift", "drift_share": 0.1053, "weighted_drift_share": 0.2}
    assert verdict_reason(quiet, None, **limits) == (
        "no drift: drift share 0.11 < 0.15, weighted 0.20 < 0.30"
    )
    degraded = {"metric": "roc_auc", "degraded": True, "drop": 0.12, "max_drop": 0.05}
    assert verdict_reason(quiet, degraded, **limits) == ("roc_auc dropped 0.120 > 0.050 (absolute)")


def test_ui_links_come_from_the_stack_file(tmp_path) -> None:
    import json

    from loopml.links import markdown_links, ui_urls

    assert ui_urls(tmp_path / "missing.json").evidently_snapshot("p", "s") is None
    stack = tmp_path / "stack.json"
    stack.write_text(
        json.dumps(
            {
                "prefect_ui_url": "http://127.0.0.1:4200",
                "mlflow_url": "sqlite:///x.db",
                "evidently_url": "http://127.0.0.1:8000/",
            }
        )
    )
    urls = ui_urls(stack)
    assert urls.evidently_snapshot("p1", "s1") == "http://127.0.0.1:8000/projects/p1/reports/s1"
    assert urls.prefect_flow_run("r1") == "http://127.0.0.1:4200/runs/flow-run/r1"
    assert urls.mlflow_run("1", "abc") is None  # an sqlite store has no pages
    assert markdown_links({"a": "http://x", "b": None}) == "[a](http://x)"
