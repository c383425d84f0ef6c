"""Evidently reports, the Evidently workspace, and performance metrics from labels."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from loopml.data import bundled_sample_path
from loopml.reports import (
    add_to_workspace,
    build_monitoring_report,
    evidently_column_drift,
    performance_metrics,
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


# --------------------------------------------------------------------------- performance


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.choice(["Yes", "No"], 500)
    y_proba = np.clip((y_true == "Yes") * 0.3 + rng.random(500) * 0.7, 0, 1)
    y_pred = np.where(y_proba > 0.5, "Yes", "No")
    result = performance_metrics(
        y_true, y_pred, y_proba, task="classification", positive_label="Yes"
    )
    positive = y_true == "Yes"
    assert result["roc_auc"] == pytest.approx(metrics.roc_auc_score(positive, y_proba))
    assert result["pr_auc"] == pytest.approx(metrics.average_precision_score(positive, y_proba))
    assert result["f1"] == pytest.approx(metrics.f1_score(positive, y_pred == "Yes"))
    assert result["log_loss"] == pytest.approx(metrics.log_loss(positive, y_proba))
    assert set(result) == {"accuracy", "precision", "recall", "f1", "log_loss", "roc_auc", "pr_auc"}


def test_single_class_batch_skips_auc() -> None:
    y_true = ["No"] * 40
    y_pred = ["No"] * 38 + ["Yes"] * 2
    y_proba = [0.1] * 38 + [0.7] * 2
    result = performance_metrics(
        y_true, y_pred, y_proba, task="classification", positive_label="Yes"
    )
    assert "roc_auc" not in result and "pr_auc" not in result
    assert result["accuracy"] == pytest.approx(0.95)
    assert np.isfinite(result["log_loss"])


def test_regression_and_multiclass_metrics() -> None:
    regression = performance_metrics([1.0, 2.0, 4.0], [1.5, 2.0, 3.0], task="regression")
    assert regression["mae"] == pytest.approx(0.5)
    assert regression["rmse"] == pytest.approx(np.sqrt((0.25 + 1.0) / 3))
    assert set(regression) == {"rmse", "mae", "r2"}
    multiclass = performance_metrics(
        ["a", "b", "c", "a"], ["a", "b", "b", "a"], task="classification"
    )
    assert multiclass["accuracy"] == pytest.approx(0.75)
    assert "f1_macro" in multiclass
    with pytest.raises(ValueError, match="rows"):
        performance_metrics([1, 2], [1], task="regression")


@pytest.mark.parametrize(
    ("truth", "predicted"),
    [
        pytest.param(
            np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2], dtype=object), id="object-ints"
        ),
        pytest.param(np.array([0, 1, 2, 2]), np.array(["0", "1", "1", "2"]), id="ints-vs-text"),
        pytest.param(np.array([0.0, 1.0, 2.0, 2.0]), np.array([0, 1, 1, 2]), id="floats-vs-ints"),
    ],
)
def test_multiclass_labels_read_back_in_another_dtype_are_still_compared(truth, predicted):
    """Integer classes come back from CSV, Parquet and the prediction log as object arrays, text
    or floats; scikit-learn refuses such mixes ('unknown' target type), loopml compares them."""
    result = performance_metrics(truth, predicted, task="classification")

    assert result["accuracy"] == pytest.approx(0.75)


def test_binary_positive_label_matches_by_value_or_text():
    result = performance_metrics(
        np.array(["1", "0", "1", "0"], dtype=object),
        np.array([1, 0, 0, 0]),
        np.array([0.9, 0.1, 0.4, 0.2]),
        task="classification",
        positive_label=1,
    )

    assert result["recall"] == pytest.approx(0.5)
    assert result["roc_auc"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- sampling noise


def _binary_batch(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, thresholded predictions and scores of a model with a ROC-AUC near 0.84."""
    generator = np.random.default_rng(seed)
    truth = generator.random(rows) < 0.3
    score = np.clip(truth * 0.35 + generator.normal(0.35, 0.2, rows), 0, 1)
    return truth, score >= 0.5, score


@pytest.mark.parametrize(
    ("task", "positive_label", "metrics_to_check"),
    [
        ("binary", True, ["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"]),
        ("multiclass", None, ["accuracy", "f1_macro"]),
        ("regression", None, ["rmse", "mae", "r2"]),
    ],
)
def test_the_numpy_metrics_equal_scikit_learns(task, positive_label, metrics_to_check):
    from loopml.reports import metric_function

    generator = np.random.default_rng(4)
    if task == "binary":
        truth, predicted, score = _binary_batch(500, seed=1)
    elif task == "multiclass":
        truth = generator.choice(["a", "b", "c"], 500)
        predicted = np.where(generator.random(500) < 0.7, truth, generator.choice(["a", "b"], 500))
        score = None
    else:
        truth = generator.normal(100, 20, 500)
        predicted = truth + generator.normal(0, 8, 500)
        score = None
    kind = "regression" if task == "regression" else "classification"
    expected = performance_metrics(
        truth, predicted, score, task=kind, positive_label=positive_label
    )
    everything = np.arange(500)

    for metric in metrics_to_check:
        function = metric_function(metric, truth, predicted, score, kind, positive_label)
        assert function(everything) == pytest.approx(expected[metric], rel=1e-9), metric


@pytest.mark.parametrize("rows", [400, 200_000])
def test_the_standard_error_of_accuracy_is_the_binomial_one(rows):
    """sqrt(p(1-p)/n), also when a large batch is resampled at 20k rows and scaled."""
    from loopml.reports import metric_standard_error

    generator = np.random.default_rng(rows)
    truth = generator.random(rows) < 0.5
    predicted = np.where(generator.random(rows) < 0.8, truth, ~truth)  # 80% right
    accuracy = float(np.mean(truth == predicted))

    error = metric_standard_error(
        truth, predicted, metric="accuracy", task="classification", positive_label=True
    )

    assert error == pytest.approx(np.sqrt(accuracy * (1 - accuracy) / rows), rel=0.15)


def test_a_single_class_batch_has_no_auc_noise():
    from loopml.reports import metric_standard_error

    truth = np.zeros(100, dtype=bool)
    error = metric_standard_error(
        truth, truth, np.linspace(0, 1, 100), metric="roc_auc", task="classification",
        positive_label=True,
    )  # fmt: skip

    assert error is None


def test_clean_small_labelled_batches_raise_fewer_false_degradations_with_the_noise_guard():
    """60 labelled rows of an unchanged model: AUC alone dips past max_drop 0.05 in roughly a
    batch in five; a drop that must also clear its sampling noise rarely does."""
    from loopml.monitoring import performance_verdict
    from loopml.reports import metric_standard_error

    reference = {"roc_auc": performance_metrics(*_binary_batch(20_000, seed=0),
                 task="classification", positive_label=True)["roc_auc"]}  # fmt: skip
    plain, guarded = 0, 0
    for seed in range(1, 31):
        truth, predicted, score = _binary_batch(60, seed=seed)
        current = performance_metrics(
            truth, predicted, score, task="classification", positive_label=True
        )
        error = metric_standard_error(
            truth, predicted, score, metric="roc_auc", task="classification",
            positive_label=True, resamples=100,
        )  # fmt: skip
        common = {"metric": "roc_auc", "max_drop": 0.05, "rows": 60, "min_rows": 50}
        plain += performance_verdict(current, reference, **common)["degraded"]
        guarded += performance_verdict(
            current, reference, **common, standard_error=error, alpha=0.05
        )["degraded"]

    assert plain >= 3
    assert guarded <= 2


def test_a_real_drop_is_still_degraded_with_the_noise_guard():
    from loopml.monitoring import performance_verdict

    verdict = performance_verdict(
        {"roc_auc": 0.70}, {"roc_auc": 0.84}, metric="roc_auc", max_drop=0.05, rows=500,
        min_rows=50, standard_error=0.02, alpha=0.05,
    )  # fmt: skip
    noisy = performance_verdict(
        {"roc_auc": 0.76}, {"roc_auc": 0.84}, metric="roc_auc", max_drop=0.05, rows=60,
        min_rows=50, standard_error=0.06, alpha=0.05,
    )  # fmt: skip

    assert verdict["degraded"] is True
    assert verdict["noise_bound"] == pytest.approx(1.645 * 0.02, rel=1e-3)
    assert noisy["degraded"] is False
    assert "sampling noise of 60 labelled rows" in noisy["note"]
