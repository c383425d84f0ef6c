"""Evidently reports and the Evidently workspace."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from loopml.data import bundled_sample_path
from loopml.reports import (
    add_to_workspace,
    build_monitoring_report,
    evidently_column_drift,
    save_report_html,
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

    first = add_to_workspace(tmp_path / "evidently", "churn", classification_snapshot)
    second = add_to_workspace(tmp_path / "evidently", "churn", classification_snapshot)
    workspace = Workspace(str(tmp_path / "evidently"))
    projects = workspace.search_project("churn")
    assert len(projects) == 1
    runs = {str(run) for run in workspace.list_runs(projects[0].id)}
    assert runs == {first, second}
