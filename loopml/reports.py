"""Evidently reports for people (HTML, the Evidently UI workspace) and performance from labels.

The verdicts that trigger retraining come from :mod:`loopml.drift` (full data, small-batch-safe);
the report here is what a person opens to see why. It runs Evidently 0.7.23's own presets on at
most ``sample_rows`` rows of each side, so its cost does not grow with the batch (see
docs/monitoring.md for the sampling error bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

TaskKind = Literal["classification", "regression"]
_P_VALUE_MARK = "p_value"


def build_monitoring_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric_columns: Sequence[str],
    categorical_columns: Sequence[str],
    target: str | None = None,
    prediction: str | None = None,
    probability: str | None = None,
    task: TaskKind = "classification",
    positive_label: Any = None,
    sample_rows: int | None = 50_000,
    drift_policy: Any = None,
    random_state: int = 0,
) -> Snapshot:
    """Run Evidently's data drift preset, plus the task's performance preset when labels exist.

    ``ClassificationPreset`` (or ``RegressionPreset``) is added when both ``target`` and
    ``prediction`` are columns of both frames. Each side is sampled down to ``sample_rows`` rows
    (``None``: no sampling) with ``random_state``, so the report costs the same on any batch.

    Args:
        reference: Reference data (the champion's training data).
        current: The batch to monitor.
        numeric_columns: Feature columns Evidently treats as numerical.
        categorical_columns: Feature columns Evidently treats as categorical.
        target: Ground-truth column, when labels have arrived.
        prediction: Predicted label (classification) or value (regression) column.
        probability: Predicted probability of ``positive_label`` (binary classification).
        task: "classification" or "regression".
        positive_label: The positive class (binary classification); without it the
            classification is treated as multiclass.
        sample_rows: At most this many rows of each side go into the report.
        random_state: Seed of the row sample.

    Returns:
        The Evidently snapshot (``save_report_html``, ``evidently_column_drift``,
        ``add_to_workspace`` take it).
    """
    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Regression,
        Report,
    )
    from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

    features = [*numeric_columns, *categorical_columns]
    labelled = (
        target is not None
        and prediction is not None
        and all(
            column in frame for frame in (reference, current) for column in (target, prediction)
        )
    )
    metrics: list[Any] = [DataDriftPreset(columns=features, **_preset_options(drift_policy))]
    definition_kwargs: dict[str, Any] = {
        "numerical_columns": list(numeric_columns),
        "categorical_columns": list(categorical_columns),
    }
    kept = list(features)
    if labelled:
        kept += [target, prediction]
        if task == "regression":
            definition_kwargs["regression"] = [Regression(target=target, prediction=prediction)]
            metrics.append(RegressionPreset())
        elif positive_label is not None:
            with_probability = probability is not None and all(
                probability in frame for frame in (reference, current)
            )
            if with_probability:
                kept.append(probability)
            definition_kwargs["classification"] = [
                BinaryClassification(
                    target=target,
                    prediction_labels=prediction,
                    prediction_probas=probability if with_probability else None,
                    pos_label=positive_label,
                )
            ]
            metrics.append(ClassificationPreset())
        else:
            definition_kwargs["classification"] = [
                MulticlassClassification(target=target, prediction_labels=prediction)
            ]
            metrics.append(ClassificationPreset())
    definition = DataDefinition(**definition_kwargs)
    reference_sample = _sample(reference[kept], sample_rows, random_state)
    current_sample = _sample(current[kept], sample_rows, random_state)
    report = Report(metrics, include_tests=True)
    return report.run(
        current_data=Dataset.from_pandas(current_sample, data_definition=definition),
        reference_data=Dataset.from_pandas(reference_sample, data_definition=definition),
    )


def _preset_options(policy: Any) -> dict[str, Any]:
    """DataDriftPreset options matching a DriftPolicy's effect sizes and dataset rule, so the
    report and loopml's verdict read alike (the policy's significance test has no Evidently
    counterpart: on small batches the report may flag a column the verdict leaves out)."""
    if policy is None:
        return {}
    numeric = {"wasserstein": "wasserstein", "psi": "psi"}[policy.numeric_method]
    categorical = {"jensenshannon": "jensenshannon", "psi": "psi"}[policy.categorical_method]
    return {
        "drift_share": policy.drift_share,
        "num_method": numeric,
        "cat_method": categorical,
        "num_threshold": policy.effect_threshold("", "numeric"),
        "cat_threshold": policy.effect_threshold("", "categorical"),
    }


def _sample(frame: pd.DataFrame, sample_rows: int | None, random_state: int) -> pd.DataFrame:
    if sample_rows is None or len(frame) <= sample_rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=sample_rows, random_state=random_state).reset_index(drop=True)


def save_report_html(snapshot: Snapshot, path: str | Path) -> Path:
    """Write the snapshot as a standalone HTML report (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path


def evidently_column_drift(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """Evidently's own drift results from a snapshot.

    Returns:
        ``{"columns": {column: {"method", "score", "threshold", "drifted"}},
        "dataset": {"count", "share", "drift_share", "drift_detected"}}``. A column's verdict is
        the status of Evidently's test when the report has tests, else Evidently's rule
        (p-value methods: drift below the threshold, KS at or below; distances: at or above).
    """
    content = snapshot.dict()
    failed_metric_ids = {
        test["metric_config"]["metric_id"]
        for test in content.get("tests", [])
        if test.get("status") == "FAIL"
    }
    tested_metric_ids = {test["metric_config"]["metric_id"] for test in content.get("tests", [])}
    columns: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    for metric in content["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            method, threshold, score = config["method"], config["threshold"], float(metric["value"])
            if metric["id"] in tested_metric_ids:
                drifted = metric["id"] in failed_metric_ids
            else:
                drifted = _evidently_rule(method, score, threshold)
            columns[config["column"]] = {
                "method": method,
                "score": score,
                "threshold": threshold,
                "drifted": bool(drifted),
            }
        elif kind == "DriftedColumnsCount":
            value = metric["value"]
            dataset = {
                "count": int(value["count"]),
                "share": float(value["share"]),
                "drift_share": float(config["drift_share"]),
                "drift_detected": bool(value["share"] >= config["drift_share"]),
            }
    return {"columns": columns, "dataset": dataset}


def _evidently_rule(method: str, score: float, threshold: float) -> bool:
    if _P_VALUE_MARK in method:
        return score <= threshold if method.startswith("K-S") else score < threshold
    return score >= threshold


def add_to_workspace(workspace_path: str | Path, project_name: str, snapshot: Snapshot) -> str:
    """Store a snapshot in the Evidently workspace so ``evidently ui --workspace PATH`` shows it.

    The project is found by name, or created once when missing.

    Returns:
        The id of the stored run (snapshot).
    """
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(workspace_path))
    projects = workspace.search_project(project_name)
    project = projects[0] if projects else workspace.create_project(project_name)
    return str(workspace.add_run(project.id, snapshot).id)


def metric_standard_error(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    y_proba: Sequence[float] | None = None,
    *,
    metric: str,
    task: TaskKind,
    positive_label: Any = None,
    resamples: int = 200,
    max_rows: int = 20_000,
    random_state: int = 0,
) -> float | None:
    """Sampling noise of ``metric`` on this batch: its bootstrap standard error over the rows.

    Batches above ``max_rows`` are resampled at ``max_rows`` rows and the error scaled by
    sqrt(max_rows / rows) (the 1/sqrt(n) law), so a 1M-row batch costs what a 20k-row one does.
    The usual metrics are computed in NumPy on each resample (:func:`metric_function`); others
    go through :func:`performance_metrics` on fewer resamples. ``None`` when the metric is
    undefined on most resamples (a single class, say).
    """
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    rows = truth.shape[0]
    if rows < 2:
        return None
    function = metric_function(metric, truth, predicted, y_proba, task, positive_label)
    if function is None:
        resamples = min(resamples, 50)

        def function(picked: np.ndarray) -> float:
            measured = performance_metrics(
                truth[picked],
                predicted[picked],
                None if y_proba is None else np.asarray(y_proba, dtype=np.float64)[picked],
                task=task,
                positive_label=positive_label,
            )
            return measured.get(metric, float("nan"))

    draw = min(rows, max_rows)
    generator = np.random.default_rng(random_state)
    values = np.array([function(generator.integers(0, rows, draw)) for _ in range(resamples)])
    values = values[np.isfinite(values)]
    if values.size < max(resamples // 2, 2):
        return None
    return float(np.std(values, ddof=1) * np.sqrt(draw / rows))


def metric_function(
    metric: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_proba: Sequence[float] | None,
    task: TaskKind,
    positive_label: Any,
) -> Callable[[np.ndarray], float] | None:
    """``metric`` of the rows at some positions, in NumPy (the same values as
    :func:`performance_metrics`); ``None`` for a metric not covered here."""
    nan = float("nan")
    if task == "regression":
        truth, error = y_true.astype(np.float64), y_pred.astype(np.float64) - y_true
        functions: dict[str, Callable[[np.ndarray], float]] = {
            "rmse": lambda at: float(np.sqrt(np.mean(error[at] ** 2))),
            "mae": lambda at: float(np.mean(np.abs(error[at]))),
            "r2": lambda at: float(
                1 - np.sum(error[at] ** 2) / np.sum((truth[at] - truth[at].mean()) ** 2)
                if np.ptp(truth[at]) > 0
                else nan
            ),
        }
        return functions.get(metric)
    if positive_label is None:
        truth, predicted = comparable_labels(y_true, y_pred)
        codes, _ = pd.factorize(np.concatenate([truth, predicted]))
        actual, guessed = codes[: len(truth)], codes[len(truth) :]

        def f1_macro(at: np.ndarray) -> float:
            a, g = actual[at], guessed[at]
            present = np.unique(np.concatenate([a, g]))
            scores = []
            for code in present:
                hit = np.sum((a == code) & (g == code))
                scores.append(2 * hit / (np.sum(a == code) + np.sum(g == code)))
            return float(np.mean(scores))

        functions = {"accuracy": lambda at: float(np.mean(actual[at] == guessed[at]))}
        functions["f1_macro"] = f1_macro
        return functions.get(metric)
    positive = is_label(y_true, positive_label)
    flagged = is_label(y_pred, positive_label)

    def counts(at: np.ndarray) -> tuple[int, int, int]:
        p, f = positive[at], flagged[at]
        return int(np.sum(p & f)), int(np.sum(~p & f)), int(np.sum(p & ~f))

    functions = {
        "accuracy": lambda at: float(np.mean(positive[at] == flagged[at])),
        "precision": lambda at: _ratio(counts(at)[0], counts(at)[0] + counts(at)[1]),
        "recall": lambda at: _ratio(counts(at)[0], counts(at)[0] + counts(at)[2]),
        "f1": lambda at: _ratio(2 * counts(at)[0], 2 * counts(at)[0] + sum(counts(at)[1:])),
    }
    if y_proba is not None:
        from scipy.stats import rankdata

        score = np.asarray(y_proba, dtype=np.float64)

        def roc_auc(at: np.ndarray) -> float:
            labels, ranks = positive[at], rankdata(score[at])
            n_pos = int(labels.sum())
            n_neg = labels.size - n_pos
            if n_pos == 0 or n_neg == 0:
                return nan
            return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

        def log_loss(at: np.ndarray) -> float:
            p = np.clip(score[at], 1e-15, 1 - 1e-15)
            return float(-np.mean(np.where(positive[at], np.log(p), np.log1p(-p))))

        functions["roc_auc"] = roc_auc
        functions["log_loss"] = log_loss
    return functions.get(metric)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def comparable_labels(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class labels of one kind on both sides, as scikit-learn's metrics need them.

    Labels read back from CSV, Parquet or the prediction log can arrive as object arrays of
    numbers (which scikit-learn calls an 'unknown' target type) or as numbers on one side and text
    on the other; numbers stay numbers when both sides are numeric, else both become text.
    """
    sides = [pd.Series(values).infer_objects() for values in (truth, predicted)]
    if all(pd.api.types.is_numeric_dtype(side) for side in sides):
        return sides[0].to_numpy(), sides[1].to_numpy()
    as_text = [side.map(_label_text).to_numpy(dtype=object) for side in sides]
    return as_text[0], as_text[1]


def is_label(values: np.ndarray, label: Any) -> np.ndarray:
    """Which values are ``label``, by value or by text (1, 1.0 and "1" are the same label)."""
    same = np.asarray(pd.Series(values) == label, dtype=bool)
    if same.any() or len(values) == 0:
        return same
    return np.asarray(pd.Series(values).map(_label_text) == _label_text(label), dtype=bool)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def performance_metrics(
    y_true: Sequence[Any] | np.ndarray | pd.Series,
    y_pred: Sequence[Any] | np.ndarray | pd.Series,
    y_proba: Sequence[float] | np.ndarray | pd.Series | None = None,
    *,
    task: TaskKind,
    positive_label: Any = None,
) -> dict[str, float]:
    """Model performance on a labelled batch.

    Classification with ``positive_label`` (binary): accuracy, precision, recall, f1 of the
    positive class, and with ``y_proba`` (probability of the positive class) log_loss, plus
    roc_auc and pr_auc when both classes occur. Without ``positive_label`` (multiclass):
    accuracy, precision_macro, recall_macro, f1_macro. Regression: rmse, mae, r2 (r2 needs two
    rows). Metrics undefined on the batch are left out instead of failing.
    """
    from sklearn import metrics

    truth = np.asarray(y_true)
    predicted = np.asarray(y_pred)
    if truth.shape[0] != predicted.shape[0]:
        raise ValueError(f"y_true has {truth.shape[0]} rows but y_pred has {predicted.shape[0]}")
    if truth.shape[0] == 0:
        raise ValueError("no labelled rows to measure performance on")
    if task == "regression":
        result = {
            "rmse": float(metrics.root_mean_squared_error(truth, predicted)),
            "mae": float(metrics.mean_absolute_error(truth, predicted)),
        }
        if truth.shape[0] >= 2:
            result["r2"] = float(metrics.r2_score(truth, predicted))
        return result
    if positive_label is None:
        truth, predicted = comparable_labels(truth, predicted)
        return {
            "accuracy": float(metrics.accuracy_score(truth, predicted)),
            "precision_macro": float(
                metrics.precision_score(truth, predicted, average="macro", zero_division=0)
            ),
            "recall_macro": float(
                metrics.recall_score(truth, predicted, average="macro", zero_division=0)
            ),
            "f1_macro": float(metrics.f1_score(truth, predicted, average="macro", zero_division=0)),
        }
    is_positive = is_label(truth, positive_label)
    predicted_positive = is_label(predicted, positive_label)
    result = {
        "accuracy": float(metrics.accuracy_score(is_positive, predicted_positive)),
        "precision": float(
            metrics.precision_score(is_positive, predicted_positive, zero_division=0)
        ),
        "recall": float(metrics.recall_score(is_positive, predicted_positive, zero_division=0)),
        "f1": float(metrics.f1_score(is_positive, predicted_positive, zero_division=0)),
    }
    if y_proba is not None:
        probability = np.asarray(y_proba, dtype=np.float64)
        result["log_loss"] = float(metrics.log_loss(is_positive, probability, labels=[False, True]))
        # ROC and PR curves need both classes: a single-class batch has no AUC.
        if 0 < is_positive.sum() < is_positive.size:
            result["roc_auc"] = float(metrics.roc_auc_score(is_positive, probability))
            result["pr_auc"] = float(metrics.average_precision_score(is_positive, probability))
    return result
