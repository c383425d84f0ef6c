"""The search's champion as one estimator: built, fitted on every row, scored out of fold."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import VotingClassifier, VotingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from loopml.config import ProjectConfig
from loopml.errors import ConfigError
from loopml.label_rule import label_index
from loopml.modeling import build_pipeline
from loopml.search.cross_validation import checked_training_data, cv_splitter, fit_quietly
from loopml.search.result import SearchResult, member_name


def pipeline_for(
    config: ProjectConfig, family: str, params: Mapping[str, Any], encoded: list[str]
) -> Pipeline:
    """The family's pipeline with ``params`` for the project's columns, task and seed;
    ``encoded`` are the categorical columns to target-encode."""
    return build_pipeline(
        family,
        params,
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        datetime_columns=config.columns.datetime,
        high_cardinality_columns=encoded,
        task=config.task,
        random_state=config.split.random_state,
    )


def best_pipeline(result: SearchResult, config: ProjectConfig) -> Pipeline | BaseEstimator:
    """The search's champion as an unfitted estimator.

    The best single pipeline, or, when the search kept a blend, a soft-voting
    ``VotingClassifier`` / averaging ``VotingRegressor`` over the members' pipelines with the
    blend's integer weights: still one scikit-learn estimator (``predict_proba`` included),
    fitted, registered and served like a pipeline.
    """
    if not result.ensemble:
        return pipeline_for(config, result.best_family, result.best_params, result.high_cardinality)
    members = [
        (
            member_name(member),
            pipeline_for(config, member["family"], member["params"], result.high_cardinality),
        )
        for member in result.ensemble
    ]
    weights = [float(member["weight"]) for member in result.ensemble]
    if config.task == "classification":
        return VotingClassifier(members, voting="soft", weights=weights)
    return VotingRegressor(members, weights=weights)


def fit_best(
    features: pd.DataFrame,
    target: pd.Series,
    result: SearchResult,
    config: ProjectConfig,
    *,
    max_threads: int | None = None,
    sample_weight: np.ndarray | None = None,
) -> Pipeline | BaseEstimator:
    """Fit the search's champion (pipeline or blend) on every training row (no subsampling).

    ``max_threads`` caps native threads as in :func:`~loopml.search.study.run_search`.
    ``sample_weight`` (one per row, e.g. a recency-weighted retraining) goes to the pipeline's
    estimator as ``model__sample_weight``, or to a blend's ``fit`` when it takes
    ``sample_weight``.
    """
    features, target = checked_training_data(features, target, config)
    model = best_pipeline(result, config)
    fit_params: dict[str, Any] = {}
    if sample_weight is not None:
        if isinstance(model, Pipeline) and "model" in model.named_steps:
            fit_params = {"model__sample_weight": sample_weight}
        elif "sample_weight" in inspect.signature(model.fit).parameters:
            fit_params = {"sample_weight": sample_weight}
    with threadpool_limits(limits=max_threads):
        return fit_quietly(model, features, target, **fit_params)


def out_of_fold_scores(
    model: Pipeline | BaseEstimator | SearchResult,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    max_threads: int | None = None,
) -> np.ndarray:
    """Out-of-fold positive-class probabilities on every given row (binary only).

    Each row is scored by a copy of the model fitted on the other folds, with the search's
    splitter, so a threshold chosen on them is not fitted to the rows it judges. A
    :class:`SearchResult` that searched exactly these rows already holds its champion's
    out-of-fold predictions (same splitter, same rows): they are reused, not refitted.

    Args:
        model: an unfitted (or fitted: it is cloned) estimator, or a :class:`SearchResult`.
        features: training rows.
        target: their labels.
        config: the project config.
        max_threads: cap on native threads, as in :func:`~loopml.search.study.run_search`.

    Returns:
        Probabilities aligned with ``target``.

    Raises:
        ConfigError: the project is not binary classification.
    """
    if not config.is_binary:
        raise ConfigError("out-of-fold positive-class scores need a binary classification project")
    features, target = checked_training_data(features, target, config)
    # Columns follow the sorted unique labels (sklearn's classes_ and the search's alike).
    positive_index = label_index(np.unique(target), config.positive_label)
    if (
        isinstance(model, SearchResult)
        and model.oof_predictions is not None
        and model.oof_index is not None
        and model.oof_index.equals(features.index)
    ):
        return model.oof_predictions[:, positive_index]
    estimator = best_pipeline(model, config) if isinstance(model, SearchResult) else clone(model)
    with warnings.catch_warnings(), threadpool_limits(limits=max_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        probabilities = cross_val_predict(
            estimator, features, target, cv=cv_splitter(config), method="predict_proba"
        )
    return probabilities[:, positive_index]
