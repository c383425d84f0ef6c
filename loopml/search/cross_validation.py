"""The rows and folds a search scores every trial and blend on, and scoring predictions on them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from loopml import metrics
from loopml.config import ProjectConfig
from loopml.errors import DataError
from loopml.evaluation import outcomes_of
from loopml.label_rule import label_index


class _StoredPredictions:
    """Predictions already made, shaped like a fitted model for :func:`compute_metrics`.

    Lets fold predictions (and blends of them) be scored by the one metrics function that
    scores fitted pipelines, so a trial, a blend and the registered model agree on a metric.
    """

    def __init__(self, values: np.ndarray, classes: np.ndarray | None) -> None:
        self.values = values
        if classes is not None:
            self.classes_ = classes

    def predict(self, features: Any) -> np.ndarray:
        return self.values

    def predict_proba(self, features: Any) -> np.ndarray:
        return self.values


@dataclass
class CrossValidation:
    """The fixed rows and folds every trial and blend of one search is scored on."""

    features: pd.DataFrame
    target: pd.Series
    folds: list[tuple[np.ndarray, np.ndarray]]
    config: ProjectConfig
    metric: str
    classes: np.ndarray | None  # sorted labels (classification), None for regression
    # The outcomes last scored on each fold, by the id of its rows (the folds' own arrays).
    _fold_outcomes: dict[int, tuple[np.ndarray, metrics.Outcomes]] = field(
        default_factory=dict, init=False, repr=False
    )

    def empty_predictions(self) -> np.ndarray:
        rows = len(self.target)
        if self.classes is None:
            return np.full(rows, np.nan)
        return np.full((rows, len(self.classes)), np.nan)

    def fold_predictions(self, fitted: Any, rows: np.ndarray) -> np.ndarray:
        features = self.features.iloc[rows]
        if self.classes is None:
            return np.asarray(fitted.predict(features), dtype=float)
        probabilities = np.asarray(fitted.predict_proba(features), dtype=float)
        # A class absent from a fold's training rows gets probability 0 in its column.
        aligned = np.zeros((len(rows), len(self.classes)))
        aligned[:, np.searchsorted(self.classes, fitted.classes_)] = probabilities
        return aligned

    def score(self, predictions: np.ndarray, rows: np.ndarray) -> float:
        """The metric of ``predictions`` (out-of-fold, in ``rows``' order) on the rows ``rows``."""
        outcomes = self._outcomes(predictions, rows)
        return float(metrics.compute([self.metric], outcomes)[self.metric])

    def _outcomes(self, predictions: np.ndarray, rows: np.ndarray) -> metrics.Outcomes:
        # A search scores each fold for every trial and every blend round (hundreds of times).
        # Metrics that read scores read nothing else but the truth (Metric.needs), so once a
        # fold's truth is keyed, only its scores change; label metrics take the whole path.
        known = self._fold_outcomes.get(id(rows))
        reads_scores = metrics.metric_needs(self.metric, self.config.task_kind) != "labels"
        if known is not None and known[0] is rows and reads_scores:
            return replace(known[1], scores=self._scores(predictions))
        stored = _StoredPredictions(predictions, self.classes)
        outcomes = outcomes_of(stored, predictions, self.target.iloc[rows], self.config)
        self._fold_outcomes[id(rows)] = (rows, outcomes)
        return outcomes

    def _scores(self, predictions: np.ndarray) -> np.ndarray:
        """What :func:`~loopml.evaluation.outcomes_of` takes as scores from these predictions."""
        if self.config.task_kind == "binary":
            positive = label_index(list(self.classes), self.config.positive_label)
            return np.asarray(predictions[:, positive], dtype=np.float64)
        return np.asarray(predictions, dtype=np.float64)

    def mean_score(self, predictions: np.ndarray) -> float:
        return float(np.mean([self.score(predictions[rows], rows) for _, rows in self.folds]))

    def run(
        self,
        pipeline: Pipeline,
        on_fold: Callable[[int, list[float]], None] | None = None,
    ) -> tuple[float, np.ndarray]:
        """Mean fold score and out-of-fold predictions of ``pipeline`` (cloned per fold)."""
        predictions = self.empty_predictions()
        fold_scores: list[float] = []
        for step, (train_rows, valid_rows) in enumerate(self.folds):
            fitted = fit_quietly(
                clone(pipeline), self.features.iloc[train_rows], self.target.iloc[train_rows]
            )
            predictions[valid_rows] = self.fold_predictions(fitted, valid_rows)
            fold_scores.append(self.score(predictions[valid_rows], valid_rows))
            if on_fold is not None:
                on_fold(step, fold_scores)
        return float(np.mean(fold_scores)), predictions


def fit_quietly(
    pipeline: Pipeline, features: pd.DataFrame, target: pd.Series, **fit_params: Any
) -> Pipeline:
    """``pipeline.fit`` without scikit-learn's convergence warnings."""
    with warnings.catch_warnings():
        # A short lbfgs run on a bad C is scored like any other trial; the warning adds noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipeline.fit(features, target, **fit_params)


def checked_training_data(
    features: pd.DataFrame, target: pd.Series, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.Series]:
    """The project's feature columns and the target as one aligned series, fit for the task.

    Raises:
        DataError: the lengths differ, a feature column is missing, a target value is missing,
            or the target does not fit the task (one class; more than two in a binary project).
    """
    if len(features) != len(target):
        raise DataError(f"{len(features)} feature rows but {len(target)} target values")
    absent = [column for column in config.columns.features if column not in features.columns]
    if absent:
        raise DataError(f"the training data is missing feature column(s): {', '.join(absent)}")
    target = pd.Series(np.asarray(target), index=features.index, name=config.target)
    if target.isna().any():
        raise DataError(
            f"the target {config.target!r} has {int(target.isna().sum())} missing value(s); "
            "drop unlabelled rows before training"
        )
    if config.task == "classification":
        n_classes = target.nunique()
        if n_classes < 2:
            raise DataError(f"the target {config.target!r} has a single class")
        if config.is_binary:
            if n_classes > 2:
                raise DataError(
                    f"the target {config.target!r} has {n_classes} classes but the project is "
                    "binary (positive_label is set); set classes instead for multiclass"
                )
            label_index(pd.unique(target), config.positive_label)
    else:
        target = pd.to_numeric(target, errors="raise").astype(np.float64)
    return features[config.columns.features], target


def subsample(
    features: pd.DataFrame, target: pd.Series, max_rows: int | None, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.Series]:
    """At most ``max_rows`` rows (all when ``None``), stratified by class where it can be."""
    if max_rows is None or len(features) <= max_rows:
        return features, target
    stratify = target if config.task == "classification" else None
    if stratify is not None and stratify.value_counts().min() < 2:
        stratify = None  # a class with one row cannot be split proportionally
    kept_features, _, kept_target, _ = train_test_split(
        features,
        target,
        train_size=max_rows,
        stratify=stratify,
        random_state=config.split.random_state,
    )
    return kept_features, kept_target


def cv_splitter(config: ProjectConfig) -> KFold | StratifiedKFold:
    """The project's seeded, shuffled folds (stratified for classification)."""
    folds = config.split.cv_folds
    seed = config.split.random_state
    if config.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)
