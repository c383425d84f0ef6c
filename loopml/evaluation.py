"""Held-out metrics, threshold choice, permutation importances and evaluation figures.

Every metric keeps its natural sign: scores (``roc_auc``, ``f1``, ``r2`` ...) are maximised,
errors (``rmse``, ``mae``, ``log_loss`` ...) are minimised; :func:`metric_direction` says which.
Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state), ready for
``mlflow.log_figure`` or ``Figure.savefig``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skmetrics
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.inspection import permutation_importance

from loopml.config import ProjectConfig
from loopml.errors import ConfigError, DataError

Direction = Literal["maximize", "minimize"]

MINIMIZED_METRICS = frozenset({"rmse", "mae", "mse", "mape", "log_loss", "brier"})
BINARY_METRICS = (
    "roc_auc",
    "pr_auc",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "f1_macro",
    "log_loss",
    "brier",
)
MULTICLASS_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "log_loss",
    "roc_auc_ovr",
    "roc_auc",
)
REGRESSION_METRICS = ("rmse", "mae", "r2", "mse", "mape")
# What evaluate() always reports per task; the config's metrics are added when they differ.
REPORTED_METRICS = {
    "binary": ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss"),
    "multiclass": ("accuracy", "f1_macro", "log_loss", "roc_auc_ovr"),
    "regression": ("rmse", "mae", "r2"),
}
THRESHOLD_OBJECTIVES = ("f1", "youden", "accuracy", "balanced_accuracy")
MAX_PERMUTATION_ROWS = 2_000


def task_kind(config: ProjectConfig) -> str:
    """``"binary"``, ``"multiclass"`` or ``"regression"``."""
    if config.task == "regression":
        return "regression"
    return "binary" if config.is_binary else "multiclass"


def supported_metrics(config: ProjectConfig) -> tuple[str, ...]:
    """The metric names :func:`evaluate` can compute for this project's task."""
    return {
        "binary": BINARY_METRICS,
        "multiclass": MULTICLASS_METRICS,
        "regression": REGRESSION_METRICS,
    }[task_kind(config)]


def check_metric(metric: str, config: ProjectConfig) -> str:
    """Return ``metric`` if the task supports it.

    Raises:
        ConfigError: the metric is unknown for the task (the message lists the known ones).
    """
    known = supported_metrics(config)
    if metric not in known:
        raise ConfigError(
            f"metric {metric!r} is not available for {task_kind(config)} tasks; "
            f"use one of: {', '.join(known)}"
        )
    return metric


def metric_direction(metric: str) -> Direction:
    """``"minimize"`` for error metrics (rmse, mae, log_loss ...), ``"maximize"`` otherwise."""
    return "minimize" if metric in MINIMIZED_METRICS else "maximize"


def positive_class_index(classes: Sequence[Any], positive_label: Any) -> int:
    """Where the positive label sits among a classifier's ``classes_``.

    Labels are matched exactly first, then by their text, so a YAML ``positive_label: 1``
    finds the class ``"1"`` (and ``True`` finds ``"True"``).

    Raises:
        DataError: the positive label is not one of the classes.
    """
    classes = list(classes)
    for index, label in enumerate(classes):
        if type(label) is type(positive_label) and label == positive_label:
            return index
    wanted = _label_text(positive_label)
    for index, label in enumerate(classes):
        if _label_text(label) == wanted:
            return index
    raise DataError(
        f"the positive label {positive_label!r} is not among the target's classes {classes!r}"
    )


def _label_text(label: Any) -> str:
    if isinstance(label, bool | np.bool_):
        return str(bool(label)).lower()
    if isinstance(label, float | np.floating) and float(label).is_integer():
        return str(int(label))
    return str(label).strip().lower()


def choose_threshold(
    y_true: Sequence[Any] | pd.Series | np.ndarray,
    positive_scores: Sequence[float] | np.ndarray,
    positive_label: Any,
    objective: str = "f1",
) -> float:
    """The probability cut-off on the positive class that maximises ``objective``.

    Meant for out-of-fold scores (see ``loopml.modeling.out_of_fold_scores``), so the choice is
    not fitted to the held-out split. A row is predicted positive when its score >= threshold.

    Args:
        y_true: true labels (raw, as in the table).
        positive_scores: predicted probability of the positive class, aligned with ``y_true``.
        positive_label: the label counted as positive.
        objective: ``"f1"``, ``"youden"`` (TPR - FPR), ``"accuracy"`` or ``"balanced_accuracy"``.

    Returns:
        The threshold, in [0, 1]; 0.5 when the labels hold a single class.
    """
    if objective not in THRESHOLD_OBJECTIVES:
        raise ConfigError(
            f"threshold objective {objective!r} is unknown; use one of {THRESHOLD_OBJECTIVES}"
        )
    y_true = np.asarray(y_true)
    scores = np.asarray(positive_scores, dtype=float)
    if len(y_true) != len(scores):
        raise DataError(f"{len(y_true)} labels but {len(scores)} scores")
    labels = pd.unique(y_true)
    is_positive = np.zeros(len(y_true), dtype=bool)
    if len(labels):
        is_positive = y_true == labels[positive_class_index(labels, positive_label)]
    n_positive = int(is_positive.sum())
    n_negative = len(is_positive) - n_positive
    if n_positive == 0 or n_negative == 0:
        return 0.5
    # Candidate cut-offs are the distinct scores: sort descending and count hits cumulatively.
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    true_positives = np.cumsum(is_positive[order])
    false_positives = np.arange(1, len(scores) + 1) - true_positives
    last_of_each_score = np.r_[np.diff(sorted_scores) != 0, True]
    candidates = sorted_scores[last_of_each_score]
    tp = true_positives[last_of_each_score].astype(float)
    fp = false_positives[last_of_each_score].astype(float)
    fn = n_positive - tp
    tn = n_negative - fp
    if objective == "f1":
        values = 2 * tp / np.maximum(2 * tp + fp + fn, 1.0)
    elif objective == "youden":
        values = tp / n_positive - fp / n_negative
    elif objective == "accuracy":
        values = (tp + tn) / len(scores)
    else:
        values = 0.5 * (tp / n_positive + tn / n_negative)
    return float(np.clip(candidates[int(np.argmax(values))], 0.0, 1.0))


def evaluate(
    pipeline: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    threshold: float | None = None,
) -> dict[str, float]:
    """Held-out metrics of a fitted pipeline.

    Binary: roc_auc, pr_auc, accuracy, precision, recall, f1, log_loss (labels predicted with
    ``threshold`` on the positive-class probability, default 0.5). Multiclass: accuracy,
    f1_macro, log_loss, roc_auc_ovr. Regression: rmse, mae, r2. The config's search, gate and
    performance metrics are always included. A metric that is undefined on this data (ROC AUC
    with a single class present) is NaN.

    Raises:
        ConfigError: a configured metric is unknown for the task.
    """
    wanted = list(REPORTED_METRICS[task_kind(config)])
    for metric in (
        config.search_metric,
        config.gate_metric,
        config.monitoring.performance.metric,
    ):
        if metric and metric not in wanted:
            wanted.append(check_metric(metric, config))
    return compute_metrics(pipeline, features, target, config, wanted, threshold=threshold)


def compute_metrics(
    pipeline: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    metrics: Sequence[str],
    *,
    threshold: float | None = None,
) -> dict[str, float]:
    """The named metrics of a fitted pipeline on ``features``/``target``."""
    for metric in metrics:
        check_metric(metric, config)
    y_true = np.asarray(target)
    kind = task_kind(config)
    with warnings.catch_warnings():
        # Single-class folds make some metrics undefined; they come back as NaN instead.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if kind == "regression":
            predictions = np.asarray(pipeline.predict(features), dtype=float)
            return {
                name: _regression_metric(name, y_true.astype(float), predictions)
                for name in metrics
            }
        probabilities = np.asarray(pipeline.predict_proba(features), dtype=float)
        classes = list(pipeline.classes_)
        if kind == "binary":
            return _binary_metrics(
                metrics, y_true, probabilities, classes, config.positive_label, threshold
            )
        return _multiclass_metrics(metrics, y_true, probabilities, classes)


def _regression_metric(name: str, y_true: np.ndarray, predictions: np.ndarray) -> float:
    if name == "rmse":
        return float(skmetrics.root_mean_squared_error(y_true, predictions))
    if name == "mse":
        return float(skmetrics.mean_squared_error(y_true, predictions))
    if name == "mae":
        return float(skmetrics.mean_absolute_error(y_true, predictions))
    if name == "mape":
        return float(skmetrics.mean_absolute_percentage_error(y_true, predictions))
    if len(y_true) < 2:
        return float("nan")
    return float(skmetrics.r2_score(y_true, predictions))


def _binary_metrics(
    metrics: Sequence[str],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[Any],
    positive_label: Any,
    threshold: float | None,
) -> dict[str, float]:
    positive_index = positive_class_index(classes, positive_label)
    scores = probabilities[:, positive_index]
    actual = y_true == classes[positive_index]
    predicted = scores >= (0.5 if threshold is None else threshold)
    both_classes = 0 < actual.sum() < len(actual)
    values: dict[str, float] = {}
    for name in metrics:
        if name == "roc_auc":
            value = skmetrics.roc_auc_score(actual, scores) if both_classes else math.nan
        elif name == "pr_auc":
            value = skmetrics.average_precision_score(actual, scores) if both_classes else math.nan
        elif name == "accuracy":
            value = skmetrics.accuracy_score(actual, predicted)
        elif name == "balanced_accuracy":
            value = skmetrics.balanced_accuracy_score(actual, predicted)
        elif name == "precision":
            value = skmetrics.precision_score(actual, predicted, zero_division=0)
        elif name == "recall":
            value = skmetrics.recall_score(actual, predicted, zero_division=0)
        elif name == "f1":
            value = skmetrics.f1_score(actual, predicted, zero_division=0)
        elif name == "f1_macro":
            value = skmetrics.f1_score(
                actual, predicted, average="macro", labels=[False, True], zero_division=0
            )
        elif name == "log_loss":
            value = skmetrics.log_loss(actual, scores, labels=[False, True])
        else:  # brier
            value = skmetrics.brier_score_loss(actual, scores, pos_label=True)
        values[name] = float(value)
    return values


def _multiclass_metrics(
    metrics: Sequence[str],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[Any],
) -> dict[str, float]:
    # Labels unseen in training get a zero-probability column so losses stay defined.
    unseen = [label for label in pd.unique(y_true) if label not in classes]
    if unseen:
        probabilities = np.hstack([probabilities, np.zeros((len(y_true), len(unseen)))])
        classes = [*classes, *unseen]
    # Labels as text: sklearn calls an object array of ints "unknown" and refuses it.
    classes = [_label_text(label) for label in classes]
    predicted = np.asarray(classes, dtype=str)[probabilities.argmax(axis=1)]
    y_object = np.asarray([_label_text(label) for label in y_true], dtype=str)
    values: dict[str, float] = {}
    for name in metrics:
        if name == "accuracy":
            value = skmetrics.accuracy_score(y_object, predicted)
        elif name == "balanced_accuracy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                value = skmetrics.balanced_accuracy_score(y_object, predicted)
        elif name == "f1_macro":
            value = skmetrics.f1_score(
                y_object, predicted, average="macro", labels=classes, zero_division=0
            )
        elif name == "log_loss":
            value = _multiclass_log_loss(y_object, probabilities, classes)
        else:  # roc_auc_ovr / roc_auc: one-vs-rest over the classes present in y_true
            value = _roc_auc_ovr(y_object, probabilities, classes)
        values[name] = float(value)
    return values


def _multiclass_log_loss(
    y_true: np.ndarray, probabilities: np.ndarray, classes: list[Any]
) -> float:
    # By hand: sklearn's log_loss expects columns in sorted label order, ours follow classes.
    clipped = np.clip(probabilities, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    column_of = {label: index for index, label in enumerate(classes)}
    columns = np.fromiter((column_of[label] for label in y_true), dtype=np.intp, count=len(y_true))
    return float(-np.mean(np.log(clipped[np.arange(len(y_true)), columns])))


def _roc_auc_ovr(y_true: np.ndarray, probabilities: np.ndarray, classes: list[Any]) -> float:
    aucs, weights = [], []
    for index, label in enumerate(classes):
        actual = y_true == label
        if 0 < actual.sum() < len(actual):
            aucs.append(skmetrics.roc_auc_score(actual, probabilities[:, index]))
            weights.append(1.0)
    return float(np.average(aucs, weights=weights)) if aucs else math.nan


def metric_scorer(config: ProjectConfig, metric: str | None = None, threshold: float | None = None):
    """A ``scorer(estimator, X, y)`` for sklearn where greater is better (errors negated)."""
    metric = check_metric(metric or config.search_metric, config)
    sign = 1.0 if metric_direction(metric) == "maximize" else -1.0

    def scorer(estimator: Any, features: pd.DataFrame, target: Any) -> float:
        values = compute_metrics(
            estimator, features, pd.Series(target), config, [metric], threshold=threshold
        )
        return sign * values[metric]

    return scorer


def permutation_importances(
    pipeline: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    metric: str | None = None,
    threshold: float | None = None,
    max_rows: int = MAX_PERMUTATION_ROWS,
    n_repeats: int = 3,
    random_state: int | None = None,
) -> dict[str, float]:
    """Mean loss of the metric when each ORIGINAL input column is shuffled (higher = matters more).

    Computed on at most ``max_rows`` rows; values are in the metric's units, sign-adjusted so
    that a positive value always means the column helps (for rmse: how much rmse grows).

    Returns:
        Column name -> importance, for every feature column in the config, most important first.
    """
    columns = [column for column in config.columns.features if column in features.columns]
    seed = config.split.random_state if random_state is None else random_state
    sample_features, sample_target = _capped_sample(features[columns], target, max_rows, seed)
    result = permutation_importance(
        pipeline,
        sample_features,
        np.asarray(sample_target),
        scoring=metric_scorer(config, metric, threshold),
        n_repeats=n_repeats,
        random_state=seed,
        n_jobs=1,
    )
    importances = {
        column: float(value) for column, value in zip(columns, result.importances_mean, strict=True)
    }
    return dict(sorted(importances.items(), key=lambda item: item[1], reverse=True))


def _capped_sample(
    features: pd.DataFrame, target: pd.Series, max_rows: int, seed: int
) -> tuple[pd.DataFrame, pd.Series]:
    if len(features) <= max_rows:
        return features, target
    positions = np.random.default_rng(seed).choice(len(features), size=max_rows, replace=False)
    positions.sort()
    return features.iloc[positions], target.iloc[positions]


def evaluation_figures(
    pipeline: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    threshold: float | None = None,
    *,
    importances: Mapping[str, float] | None = None,
) -> dict[str, Figure]:
    """Diagnostic figures of a fitted pipeline on held-out data.

    Binary: roc_curve, pr_curve, confusion_matrix, calibration, permutation_importance.
    Multiclass: confusion_matrix, permutation_importance. Regression: predicted_vs_actual,
    residuals, permutation_importance. Pass ``importances`` (from
    :func:`permutation_importances`) to avoid computing them twice.
    """
    kind = task_kind(config)
    y_true = np.asarray(target)
    if importances is None:
        importances = permutation_importances(
            pipeline, features, target, config, threshold=threshold
        )
    figures: dict[str, Figure] = {}
    if kind == "binary":
        classes = list(pipeline.classes_)
        positive_index = positive_class_index(classes, config.positive_label)
        scores = np.asarray(pipeline.predict_proba(features))[:, positive_index]
        actual = y_true == classes[positive_index]
        cut = 0.5 if threshold is None else threshold
        negative_label = classes[1 - positive_index]
        predicted_labels = np.where(scores >= cut, classes[positive_index], negative_label)
        figures["roc_curve"] = _roc_figure(actual, scores)
        figures["pr_curve"] = _pr_figure(actual, scores)
        figures["confusion_matrix"] = _confusion_figure(
            y_true,
            predicted_labels,
            [negative_label, classes[positive_index]],
            title=f"Confusion matrix (threshold {cut:.3f})",
        )
        figures["calibration"] = _calibration_figure(actual, scores)
    elif kind == "multiclass":
        predicted_labels = np.asarray(pipeline.predict(features))
        labels = list(pipeline.classes_)
        labels += [label for label in pd.unique(y_true) if label not in labels]
        figures["confusion_matrix"] = _confusion_figure(
            y_true, predicted_labels, labels, title="Confusion matrix"
        )
    else:
        predictions = np.asarray(pipeline.predict(features), dtype=float)
        figures["predicted_vs_actual"] = _predicted_vs_actual_figure(
            y_true.astype(float), predictions
        )
        figures["residuals"] = _residuals_figure(y_true.astype(float), predictions)
    metric = config.search_metric
    figures["permutation_importance"] = _importance_figure(importances, metric)
    return figures


def _new_axes(title: str, size: tuple[float, float] = (5.5, 4.5)):
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    return figure, axes


def _roc_figure(actual: np.ndarray, scores: np.ndarray) -> Figure:
    figure, axes = _new_axes("ROC curve")
    if 0 < actual.sum() < len(actual):
        fpr, tpr, _ = skmetrics.roc_curve(actual, scores)
        auc = skmetrics.roc_auc_score(actual, scores)
        axes.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    axes.legend(loc="lower right")
    return figure


def _pr_figure(actual: np.ndarray, scores: np.ndarray) -> Figure:
    figure, axes = _new_axes("Precision-recall curve")
    if 0 < actual.sum() < len(actual):
        precision, recall, _ = skmetrics.precision_recall_curve(actual, scores)
        average_precision = skmetrics.average_precision_score(actual, scores)
        axes.step(recall, precision, where="post", label=f"model (AP {average_precision:.3f})")
    base_rate = float(actual.mean()) if len(actual) else 0.0
    axes.axhline(base_rate, linestyle="--", color="grey", label=f"base rate {base_rate:.3f}")
    axes.set_xlabel("Recall")
    axes.set_ylabel("Precision")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="upper right")
    return figure


def _confusion_figure(
    y_true: np.ndarray, predicted: np.ndarray, labels: list[Any], title: str
) -> Figure:
    size = max(4.5, 0.6 * len(labels) + 2.5)
    figure, axes = _new_axes(title, (size, size))
    label_text = [_label_text(label) for label in labels]
    # Labels as text: sklearn calls an object array of ints "unknown" and refuses it.
    matrix = skmetrics.confusion_matrix(
        np.asarray([_label_text(label) for label in y_true], dtype=str),
        np.asarray([_label_text(label) for label in predicted], dtype=str),
        labels=np.asarray(label_text, dtype=str),
    )
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    dark = matrix.max() / 2 if matrix.size else 0
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            axes.text(
                column,
                row,
                str(matrix[row, column]),
                ha="center",
                va="center",
                color="white" if matrix[row, column] > dark else "black",
            )
    axes.set_xticks(range(len(labels)), label_text, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), label_text)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("Actual")
    return figure


def _calibration_figure(actual: np.ndarray, scores: np.ndarray) -> Figure:
    figure, axes = _new_axes("Calibration (quantile bins)")
    if 0 < actual.sum() < len(actual):
        observed, predicted = calibration_curve(actual, scores, n_bins=10, strategy="quantile")
        axes.plot(predicted, observed, marker="o", label="model")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.set_xlabel("Mean predicted probability")
    axes.set_ylabel("Observed positive rate")
    axes.legend(loc="upper left")
    return figure


def _predicted_vs_actual_figure(y_true: np.ndarray, predictions: np.ndarray) -> Figure:
    figure, axes = _new_axes("Predicted vs actual")
    axes.scatter(y_true, predictions, s=8, alpha=0.5)
    finite = np.concatenate([y_true, predictions])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        axes.plot([low, high], [low, high], linestyle="--", color="grey", label="ideal")
        axes.legend(loc="upper left")
    axes.set_xlabel("Actual")
    axes.set_ylabel("Predicted")
    return figure


def _residuals_figure(y_true: np.ndarray, predictions: np.ndarray) -> Figure:
    figure, axes = _new_axes("Residuals (actual - predicted)")
    axes.scatter(predictions, y_true - predictions, s=8, alpha=0.5)
    axes.axhline(0.0, linestyle="--", color="grey")
    axes.set_xlabel("Predicted")
    axes.set_ylabel("Residual")
    return figure


def _importance_figure(importances: Mapping[str, float], metric: str, top: int = 20) -> Figure:
    shown = list(importances.items())[:top][::-1]
    figure, axes = _new_axes(
        f"Permutation importance ({metric})", (6.5, max(3.0, 0.35 * len(shown) + 1.5))
    )
    axes.barh([name for name, _ in shown], [value for _, value in shown])
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel(f"Loss of {metric} when shuffled")
    return figure
