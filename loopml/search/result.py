"""What a search found (:class:`SearchResult`) and its trials as a table for people."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        best_family: the best single pipeline's model family.
        best_params: its estimator parameters (plain names, no family key).
        best_cv_score: the best trial's mean CV score, in the metric's natural sign.
        metric: the search metric.
        direction: ``"maximize"`` or ``"minimize"``.
        n_trials: finished trials in the study (complete, pruned or failed), resumed ones included.
        n_complete: complete trials.
        n_pruned: pruned trials.
        per_family_best: best complete score of each family tried.
        trials: one row per finished trial: number, family, value, state, duration_seconds, params.
        study_name: the Optuna study.
        rows_searched: rows the cross-validation saw (after ``max_training_rows``).
        elapsed_seconds: wall time of this call.
        ensemble: the blend's members when it beat the best single pipeline out of fold (else
            empty): ``trial``, ``family``, ``params`` and integer ``weight`` each.
        ensemble_cv_score: the blend's mean CV score (``None`` when no blend was tried).
        high_cardinality: categorical columns the pipelines target-encode.
        oof_predictions: the champion's out-of-fold predictions on the searched rows
            (probabilities per class in sorted label order, or values), when known.
        oof_index: the index of the rows ``oof_predictions`` belong to.
    """

    best_family: str
    best_params: dict[str, Any]
    best_cv_score: float
    metric: str
    direction: str
    n_trials: int
    n_complete: int
    n_pruned: int
    per_family_best: dict[str, float]
    trials: pd.DataFrame
    study_name: str
    rows_searched: int = 0
    elapsed_seconds: float = 0.0
    ensemble: list[dict[str, Any]] = field(default_factory=list)
    ensemble_cv_score: float | None = None
    high_cardinality: list[str] = field(default_factory=list)
    oof_predictions: np.ndarray | None = field(default=None, repr=False)
    oof_index: pd.Index | None = field(default=None, repr=False)

    @property
    def champion_family(self) -> str:
        """``"ensemble"`` when the champion is a blend, else the best single family."""
        return "ensemble" if self.ensemble else self.best_family

    @property
    def champion_cv_score(self) -> float:
        """The champion's mean CV score (the blend's when it is a blend)."""
        if self.ensemble and self.ensemble_cv_score is not None:
            return self.ensemble_cv_score
        return self.best_cv_score

    @property
    def champion_params(self) -> dict[str, Any]:
        """The champion's parameters; a blend's as ``<member>__<param>`` and ``<member>`` weight."""
        if not self.ensemble:
            return dict(self.best_params)
        params: dict[str, Any] = {}
        for member in self.ensemble:
            name = member_name(member)
            params[name] = member["weight"]
            params.update({f"{name}__{k}": v for k, v in member["params"].items()})
        return params

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest (for logs, MLflow params and ``--json`` output)."""
        return {
            "best_family": self.best_family,
            "best_params": self.best_params,
            "best_cv_score": self.best_cv_score,
            "champion_family": self.champion_family,
            "champion_cv_score": self.champion_cv_score,
            "ensemble": [
                {key: member[key] for key in ("trial", "family", "weight")}
                for member in self.ensemble
            ],
            "ensemble_cv_score": self.ensemble_cv_score,
            "high_cardinality": self.high_cardinality,
            "metric": self.metric,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "per_family_best": self.per_family_best,
            "study_name": self.study_name,
            "rows_searched": self.rows_searched,
            "elapsed_seconds": self.elapsed_seconds,
        }


def member_name(member: Mapping[str, Any]) -> str:
    """A blend member's name: its family and trial number (``hist_gradient_boosting_7``)."""
    return f"{member['family']}_{member['trial']}"


def trials_table(result: SearchResult) -> pd.DataFrame:
    """Every finished trial of the search as one table for people (the MLflow run logs it):
    trial number, family, state, the mean CV score (``cv_METRIC``), seconds and the
    estimator parameters as JSON text, best score first."""
    trials = result.trials
    ascending = result.direction == "minimize"
    return pd.DataFrame(
        {
            "trial": trials["number"].astype(int),
            "family": trials["family"],
            "state": trials["state"],
            f"cv_{result.metric}": trials["value"].astype(float),
            "seconds": trials["duration_seconds"].astype(float).round(2),
            "params": [
                json.dumps(params, sort_keys=True, default=str) for params in trials["params"]
            ],
        }
    ).sort_values(
        [f"cv_{result.metric}", "trial"],
        ascending=[ascending, True],
        na_position="last",
        ignore_index=True,
    )
