"""Held-out metrics, threshold choice, permutation importances and evaluation figures.

Metrics come from :mod:`loopml.metrics` (one definition each); this module turns a fitted model
and labelled rows into the outcomes they read. A binary model carries its decision threshold
(:func:`loopml.modeling.with_threshold`), so its ``predict`` gives the labels that are judged.
Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state), rendered once
by :func:`loopml.figures.png_bytes` for the run's artifacts and the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skmetrics
from sklearn.calibration import calibration_curve

from loopml import metrics
from loopml.config import ProjectConfig
from loopml.errors import ConfigError, DataError
from loopml.label_rule import label_index, label_keys
from loopml.scoring import labels_from_probabilities

THRESHOLD_OBJECTIVES = ("f1", "youden", "accuracy", "balanced_accuracy")
MAX_PERMUTATION_ROWS = 2_000


def check_metric(metric: str, config: ProjectConfig) -> str:
    """Return ``metric`` if the task supports it.

    Raises:
        ConfigError: the metric is unknown for the task (the message lists the known ones).
    """
    problem = metrics.unknown_metric_message(metric, config.task_kind)
    if problem:
        raise ConfigError(problem)
    return metric


def choose_threshold(
    y_true: Sequence[Any] | pd.Series | np.ndarray,
    positive_scores: Sequence[float] | np.ndarray,
    positive_label: Any,
    objective: str = "f1",
) -> float:
    """The probability cut-off on the positive class that maximises ``objective``.

    Meant for out-of-fold scores (see ``loopml.search.fit.out_of_fold_scores``), so the choice is
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
    is_positive = metrics.binary_outcomes(y_true, y_true, positive_label).truth
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
    model: Any, features: pd.DataFrame, target: pd.Series, config: ProjectConfig
) -> dict[str, float]:
    """Held-out metrics of a fitted model.

    The task's usual metrics (:data:`loopml.metrics.REPORTED_METRICS`) plus the config's
    search, gate and performance metrics. A metric that is undefined on this data (ROC AUC with
    a single class present) is NaN.
    """
    wanted = list(metrics.REPORTED_METRICS[config.task_kind])
    for metric in (config.search_metric, config.gate_metric, config.performance_metric):
        if metric not in wanted:
            wanted.append(check_metric(metric, config))
    return compute_metrics(model, features, target, config, wanted)


def model_outcomes(
    model: Any, features: pd.DataFrame, target: pd.Series, config: ProjectConfig
) -> metrics.Outcomes:
    """The outcomes of a fitted model on labelled rows: its own labels (threshold included,
    :func:`loopml.scoring.labels_from_probabilities`) and, for classifiers, ``predict_proba``."""
    return outcomes_of(model, model_output(model, features, config), target, config)


def model_output(model: Any, features: pd.DataFrame, config: ProjectConfig) -> np.ndarray:
    """What the outcomes are made of: ``predict_proba`` for classifiers, ``predict`` else."""
    if config.task_kind == "regression":
        return np.asarray(model.predict(features), dtype=float)
    return np.asarray(model.predict_proba(features), dtype=float)


def outcomes_of(
    model: Any, output: np.ndarray, target: pd.Series, config: ProjectConfig
) -> metrics.Outcomes:
    """The outcomes of ``output`` (from :func:`model_output` of ``model``) against ``target``."""
    if config.task_kind == "regression":
        return metrics.regression_outcomes(np.asarray(target, dtype=float), output)
    probabilities = output
    predicted = labels_from_probabilities(model, probabilities)
    classes = list(model.classes_)
    if config.task_kind == "binary":
        scores = probabilities[:, label_index(classes, config.positive_label)]
        return metrics.binary_outcomes(target, predicted, config.positive_label, scores)
    return metrics.multiclass_outcomes(target, predicted, probabilities, classes)


def compute_metrics(
    model: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    names: Sequence[str],
) -> dict[str, float]:
    """The named metrics of a fitted model on ``features``/``target``."""
    for metric in names:
        check_metric(metric, config)
    return metrics.compute(names, model_outcomes(model, features, target, config))


def metric_scorer(config: ProjectConfig, metric: str | None = None):
    """A ``scorer(estimator, X, y)`` for sklearn where greater is better (errors negated)."""
    metric = check_metric(metric or config.search_metric, config)
    sign = 1.0 if metrics.metric_direction(metric) == "maximize" else -1.0

    def scorer(estimator: Any, features: pd.DataFrame, target: Any) -> float:
        values = compute_metrics(estimator, features, pd.Series(target), config, [metric])
        return sign * values[metric]

    return scorer


def permutation_importances(
    pipeline: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    metric: str | None = None,
    max_rows: int = MAX_PERMUTATION_ROWS,
    n_repeats: int = 3,
    random_state: int | None = None,
) -> dict[str, float]:
    """Mean loss of the metric when each ORIGINAL input column is shuffled (higher = matters more).

    Computed on at most ``max_rows`` rows; values are in the metric's units, sign-adjusted so
    that a positive value always means the column helps (for rmse: how much rmse grows).

    The shuffles are scikit-learn's (``sklearn.inspection.permutation_importance`` with the same
    ``random_state`` gives the same values), but the shuffled copies are scored together, a few
    hundred thousand cells per ``predict`` call, instead of one call per column and repeat: a
    pipeline's cost per call (column transformer, encoders) then counts a few times, not
    ``columns x n_repeats`` times.

    Returns:
        Column name -> importance, for every feature column in the config, most important first.
    """
    metric = check_metric(metric or config.search_metric, config)
    sign = 1.0 if metrics.metric_direction(metric) == "maximize" else -1.0
    columns = [column for column in config.columns.features if column in features.columns]
    seed = config.split.random_state if random_state is None else random_state
    sample, sample_target = _capped_sample(features[columns], target, max_rows, seed)
    sample = sample.reset_index(drop=True)

    def score(output: np.ndarray) -> float:
        return metrics.compute([metric], outcomes_of(pipeline, output, sample_target, config))[
            metric
        ]

    baseline = score(model_output(pipeline, sample, config))
    shuffled = _shuffled_copies(sample, columns, n_repeats, seed)
    rows, copies_per_call = len(sample), max(1, PERMUTATION_CELLS_PER_CALL // max(sample.size, 1))
    losses: dict[str, list[float]] = {column: [] for column in columns}
    for start in range(0, len(shuffled), copies_per_call):
        chunk = shuffled[start : start + copies_per_call]
        output = model_output(
            pipeline, pd.concat([copy for _, copy in chunk], ignore_index=True), config
        )
        for position, (column, _) in enumerate(chunk):
            permuted = score(output[position * rows : (position + 1) * rows])
            losses[column].append(sign * (baseline - permuted))
    importances = {column: float(np.mean(losses[column])) for column in columns}
    return dict(sorted(importances.items(), key=lambda item: item[1], reverse=True))


PERMUTATION_CELLS_PER_CALL = 400_000


def _shuffled_copies(
    sample: pd.DataFrame, columns: list[str], n_repeats: int, seed: int
) -> list[tuple[str, pd.DataFrame]]:
    """``n_repeats`` copies of ``sample`` per column with that column shuffled, in the order and
    with the shuffles of ``sklearn.inspection.permutation_importance(random_state=seed)``: one
    seed drawn from ``seed``, a fresh generator from it per column, and each repeat shuffling
    the previous repeat's column again."""
    column_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    copies = []
    for column in columns:
        generator = np.random.RandomState(column_seed)
        order = np.arange(len(sample))
        values = sample[column]
        for _ in range(n_repeats):
            generator.shuffle(order)
            values = values.iloc[order].set_axis(sample.index)  # keeps the column's dtype
            copy = sample.copy()
            copy[column] = values
            copies.append((column, copy))
    return copies


def _capped_sample(
    features: pd.DataFrame, target: pd.Series, max_rows: int, seed: int
) -> tuple[pd.DataFrame, pd.Series]:
    if len(features) <= max_rows:
        return features, target
    positions = np.random.default_rng(seed).choice(len(features), size=max_rows, replace=False)
    positions.sort()
    return features.iloc[positions], target.iloc[positions]


def evaluation_figures(
    model: Any,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    importances: Mapping[str, float] | None = None,
) -> dict[str, Figure]:
    """Diagnostic figures of a fitted model on held-out data.

    Binary: roc_curve, pr_curve, confusion_matrix (of the model's own thresholded labels),
    calibration, permutation_importance. Multiclass: confusion_matrix, permutation_importance.
    Regression: predicted_vs_actual, residuals, permutation_importance. Pass ``importances``
    (from :func:`permutation_importances`) to avoid computing them twice.
    """
    kind = config.task_kind
    y_true = np.asarray(target)
    if importances is None:
        importances = permutation_importances(model, features, target, config)
    figures: dict[str, Figure] = {}
    if kind == "binary":
        classes = list(model.classes_)
        positive_index = label_index(classes, config.positive_label)
        outcomes = model_outcomes(model, features, target, config)
        actual, scores = outcomes.truth, outcomes.scores
        negative_label = classes[1 - positive_index]
        figures["roc_curve"] = _roc_figure(actual, scores)
        figures["pr_curve"] = _pr_figure(actual, scores)
        # A FixedThresholdClassifier names its cut; a bare pipeline cuts at 0.5.
        cut = getattr(model, "threshold", 0.5)
        figures["confusion_matrix"] = _confusion_figure(
            y_true,
            np.asarray(model.predict(features)),
            [negative_label, classes[positive_index]],
            title=f"Confusion matrix (threshold {cut:.3f})",
        )
        figures["calibration"] = _calibration_figure(actual, scores)
    elif kind == "multiclass":
        predicted_labels = np.asarray(model.predict(features))
        labels = list(model.classes_)
        labels += [label for label in pd.unique(y_true) if label not in labels]
        figures["confusion_matrix"] = _confusion_figure(
            y_true, predicted_labels, labels, title="Confusion matrix"
        )
    else:
        predictions = np.asarray(model.predict(features), dtype=float)
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
    label_text = [str(label) for label in labels]
    # Labels as their keys: one rule for equality, and sklearn refuses object arrays of ints.
    matrix = skmetrics.confusion_matrix(
        np.asarray(label_keys(y_true), dtype=str),
        np.asarray(label_keys(predicted), dtype=str),
        labels=np.asarray(label_keys(labels), dtype=str),
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
