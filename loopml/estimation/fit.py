"""Fitting the estimator on held-out rows the model never trained on, at registration time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loopml.config import ProjectConfig
from loopml.estimation.calibration import fit_calibration
from loopml.estimation.estimator import EstimationError, PerformanceEstimator
from loopml.estimation.loss_models import loss_model, loss_model_input
from loopml.estimation.outputs import ModelOutputs
from loopml.label_rule import is_label

# Bootstrap resamples of the held-out rows the calibration maps are refitted on (their spread
# is the calibration's own error in the interval).
CALIBRATION_RESAMPLES = 20

# The metrics estimated, by task.
BINARY_METRICS = ("roc_auc", "accuracy", "precision", "recall", "f1")
MULTICLASS_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
REGRESSION_METRICS = ("mae", "rmse")


def estimator_metrics(config: ProjectConfig) -> tuple[str, ...]:
    """The metrics the project's estimator covers."""
    if config.task == "regression":
        return REGRESSION_METRICS
    return BINARY_METRICS if config.is_binary else MULTICLASS_METRICS


def fit_estimator(
    config: ProjectConfig,
    outputs: ModelOutputs,
    truth: pd.Series,
    features: pd.DataFrame,
    realised: dict[str, float],
    *,
    random_state: int = 0,
) -> PerformanceEstimator:
    """Fit CBPE's calibration (classification) or DLE's loss models (regression) on held-out
    rows the model never trained on.

    Raises:
        EstimationError: too few held-out rows, or a class absent from them.
    """
    known = truth.notna().to_numpy()
    if known.sum() < 20:
        raise EstimationError(f"only {int(known.sum())} labelled held-out rows: no estimator")
    realised = {k: float(v) for k, v in realised.items() if k in estimator_metrics(config)}
    if config.task == "regression":
        return _fit_dle(outputs, truth, features, realised, random_state)
    probabilities = np.asarray(outputs.probabilities)[known]
    observed = np.asarray(truth)[known]
    classes = outputs.classes
    generator = np.random.default_rng(random_state)
    resamples = [
        generator.integers(0, len(observed), len(observed)) for _ in range(CALIBRATION_RESAMPLES)
    ]
    index = _class_index(classes, config.positive_label) if config.is_binary else None
    # Binary: the positive class's map only; multiclass: one map per class (one-vs-rest).
    calibrated_columns = [index] if index is not None else list(range(len(classes)))
    columns = [
        (probabilities[:, i], is_label(observed, classes[i]).astype(float))
        for i in calibrated_columns
    ]
    maps = [fit_calibration(scores, outcomes) for scores, outcomes in columns]

    def refitted(at: np.ndarray) -> list[dict[str, Any]]:
        # The method chosen on all rows, refitted: the spread is the map's estimation error.
        return [
            fit_calibration(scores[at], outcomes[at], knots["method"])
            for (scores, outcomes), knots in zip(columns, maps, strict=True)
        ]

    estimator = PerformanceEstimator(
        method="cbpe",
        task=config.task,
        classes=[str(c) for c in classes],
        positive_index=index,
        calibration=maps,
        reference_realised=realised,
        rows=int(known.sum()),
    )
    estimator.calibration_resamples = [refitted(at) for at in resamples]
    estimator.reference_estimated = estimator.estimate_metrics(outputs)
    return estimator


def _fit_dle(
    outputs: ModelOutputs,
    truth: pd.Series,
    features: pd.DataFrame,
    realised: dict[str, float],
    random_state: int,
) -> PerformanceEstimator:
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    known = truth.notna().to_numpy()
    frame = loss_model_input(features[known], outputs.labels[known])
    error = outputs.labels[known] - truth.to_numpy(dtype=float)[known]
    targets = {"mae": np.abs(error), "rmse": error**2}
    models, spread = {}, {}
    template = loss_model(frame, random_state)
    for metric, target in targets.items():
        folds = min(3, max(2, len(frame) // 50))
        out_of_fold = cross_val_predict(clone(template), frame, target, cv=folds)
        spread[metric] = float(np.std(target - np.clip(out_of_fold, 0.0, None), ddof=1))
        models[metric] = clone(template).fit(frame, target)
    estimator = PerformanceEstimator(
        method="dle",
        task="regression",
        reference_realised=realised,
        loss_spread=spread,
        rows=int(known.sum()),
        loss_models=models,
    )
    estimator.reference_estimated = estimator.estimate_metrics(
        ModelOutputs(outputs.labels[known], None, []), features[known]
    )
    return estimator


def _class_index(classes: list[Any], label: Any) -> int:
    for index, value in enumerate(classes):
        if value == label or str(value) == str(label):
            return index
    raise EstimationError(f"the model has no class {label!r} (classes: {classes})")
