"""Scoring models for the gate: one place that turns a model and a frame into outcomes and metrics.

Every comparison the gate, the policy backtest and the rollback check make goes through
:func:`model_outputs` (the model's own ``predict``/``predict_proba``, its decision threshold
inside), so how a model is asked for predictions lives in one function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from loopml import evaluation, metrics
from loopml.config import ProjectConfig
from loopml.features import prepare_features, prepare_target
from loopml.gate_stats import PairedDifference, paired_bootstrap
from loopml.registry import get_version, load_version_model


@dataclass
class Scorer:
    """A model as the gate uses it (a registered version, or a fresh candidate)."""

    model: Any
    version: str | None = None


def load_scorer(client: MlflowClient, name: str, version: str, config: ProjectConfig) -> Scorer:
    """A registered version, ready for :func:`model_outputs`."""
    registered = get_version(client, name, version)
    return Scorer(load_version_model(registered, config.positive_label, client), str(version))


def model_outputs(scorer: Scorer, frame: pd.DataFrame, config: ProjectConfig) -> metrics.Outcomes:
    """The model's outcomes on ``frame`` (features + target)."""
    return evaluation.model_outcomes(
        scorer.model, prepare_features(frame, config), prepare_target(frame, config), config
    )


def metric_at(outcomes: metrics.Outcomes, metric: str) -> Callable[[np.ndarray], float]:
    """positions -> ``metric`` of the rows at those positions (NaN where undefined)."""

    def measure(at: np.ndarray) -> float:
        value = metrics.compute([metric], outcomes.take(at))[metric]
        return float(value) if value is not None else math.nan

    return measure


def compare_models(
    candidate: Scorer,
    champion: Scorer,
    frame: pd.DataFrame,
    config: ProjectConfig,
    *,
    metric: str,
    alpha: float,
    resamples: int,
) -> PairedDifference:
    """Both models on the same labelled rows, with the paired-bootstrap interval of the gain."""
    candidate_metric = metric_at(model_outputs(candidate, frame, config), metric)
    champion_metric = metric_at(model_outputs(champion, frame, config), metric)
    return paired_bootstrap(
        lambda at: (candidate_metric(at), champion_metric(at)),
        len(frame),
        metric=metric,
        alpha=alpha,
        resamples=resamples,
        seed=config.split.random_state,
    )


def score_rows(scorer: Scorer, frame: pd.DataFrame, config: ProjectConfig, metric: str) -> float:
    """``metric`` of one model on all of ``frame``'s rows."""
    return metric_at(model_outputs(scorer, frame, config), metric)(np.arange(len(frame)))


def score_model(scorer: Scorer, frame: pd.DataFrame, config: ProjectConfig) -> dict[str, float]:
    """Every reported metric of one model on ``frame`` (features + target)."""
    return evaluation.evaluate(
        scorer.model, prepare_features(frame, config), prepare_target(frame, config), config
    )
