"""The hyperparameter search: search spaces, a portfolio of proven starts, the Optuna study
across families, greedy ensemble selection, and fitting the chosen pipeline.

Scores keep their natural sign: the study maximises scores (roc_auc, f1_macro, ...) and
minimises errors (rmse, mae, log_loss); ``SearchResult.direction`` says which.

The search goes beyond the best single family: every family's study starts from a small
portfolio of configurations known to do well on tabular data (:data:`PORTFOLIO`), boosting
stops early on a validation slice instead of running a fixed number of rounds (see
:mod:`loopml.modeling`), and the champion may be a weighted soft-voting blend of the best trials
of several families, chosen by greedy ensemble selection on out-of-fold predictions (Caruana et
al., "Ensemble Selection from Libraries of Models", ICML 2004) when it beats the best single
pipeline out of fold by more than :data:`ENSEMBLE_MIN_GAIN`.

The pipelines themselves (families, preprocessing, the threshold wrapper) are in
:mod:`loopml.modeling`.
"""

from __future__ import annotations

import inspect
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import VotingClassifier, VotingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import (
    KFold,
    StratifiedKFold,
    cross_val_predict,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from loopml.config import ParamRange, ProjectConfig
from loopml.errors import ConfigError, DataError, LoopmlError
from loopml.evaluation import check_metric, compute_metrics
from loopml.label_rule import label_index
from loopml.metrics import metric_direction
from loopml.modeling import (
    build_pipeline,
    high_cardinality_columns,
    search_families,
)

# Share of the time budget kept for ensemble selection and the final refit.
ENSEMBLE_TIME_SHARE = 0.2
# Greedy ensemble selection: rounds (with replacement) and candidates (best trials) it draws on.
ENSEMBLE_ROUNDS = 20
ENSEMBLE_CANDIDATES = 6
# A blend is kept only when it beats the best single model by this share of its CV score: below
# that the gain is fold noise, and a single pipeline is smaller, faster and exactly explainable.
ENSEMBLE_MIN_GAIN = 0.001

# Ranges sized for 2 cores and small-to-medium tables; config.search.spaces overrides them.
DEFAULT_SPACES: dict[str, dict[str, ParamRange]] = {
    "logistic": {"C": ParamRange(low=1e-3, high=100.0, log=True)},
    "ridge": {"alpha": ParamRange(low=1e-3, high=1e3, log=True)},
    "hist_gradient_boosting": {
        # Early stopping sets the rounds; below 0.02 they would run into HGB_MAX_ITER.
        "learning_rate": ParamRange(low=0.02, high=0.3, log=True),
        "max_leaf_nodes": ParamRange(low=4, high=128, log=True, integer=True),
        "min_samples_leaf": ParamRange(low=2, high=100, log=True, integer=True),
        "l2_regularization": ParamRange(low=1e-4, high=10.0, log=True),
        "max_features": ParamRange(low=0.4, high=1.0),
    },
    "random_forest": {
        "n_estimators": ParamRange(low=50, high=250, integer=True),
        "max_depth": ParamRange(low=4, high=24, integer=True),
        "min_samples_leaf": ParamRange(low=1, high=20, log=True, integer=True),
        "max_features": ParamRange(low=0.2, high=1.0),
    },
}
# The first trials of each family (enqueued, in this order, before TPE proposes anything):
# configurations known to do well on tabular data, clipped to the family's ranges.
# - logistic / ridge: scikit-learn's default (C=1, alpha=1), then a more regularised one
#   (the usual first step of a log-scale grid).
# - hist_gradient_boosting: (1) scikit-learn's defaults; (2) AutoGluon's "GBMLarge" LightGBM
#   configuration of its default/zero-shot portfolio (learning_rate 0.03, num_leaves 128,
#   min_data_in_leaf 3, feature_fraction 0.9), in HGB's names; (3) FLAML's low-cost initial
#   point for LightGBM (num_leaves 4, min_child_samples 20, learning_rate 0.1, reg_lambda 1):
#   small trees that early stopping lets grow in rounds instead of depth. All early-stopped.
# - random_forest: scikit-learn-like defaults (100 trees, deep, min leaf 1, half the
#   features), and the sqrt-like feature share with 2-row leaves AutoGluon's and TabRepo's
#   forest configurations favour.
PORTFOLIO: dict[str, list[dict[str, float]]] = {
    "logistic": [{"C": 1.0}, {"C": 0.1}],
    "ridge": [{"alpha": 1.0}, {"alpha": 10.0}],
    "hist_gradient_boosting": [
        {
            "learning_rate": 0.1,
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 1e-4,
            "max_features": 1.0,
        },
        {
            "learning_rate": 0.03,
            "max_leaf_nodes": 128,
            "min_samples_leaf": 3,
            "l2_regularization": 1e-4,
            "max_features": 0.9,
        },
        {
            "learning_rate": 0.1,
            "max_leaf_nodes": 4,
            "min_samples_leaf": 20,
            "l2_regularization": 1.0,
            "max_features": 1.0,
        },
    ],
    "random_forest": [
        {"n_estimators": 100, "max_depth": 24, "min_samples_leaf": 1, "max_features": 0.5},
        {"n_estimators": 150, "max_depth": 24, "min_samples_leaf": 2, "max_features": 0.3},
    ],
}


# --------------------------------------------------------------------------- search space


def search_space(
    family: str, overrides: Mapping[str, ParamRange] | None = None
) -> dict[str, ParamRange]:
    """The family's default ranges, with ``overrides`` replacing or adding parameters."""
    if family not in DEFAULT_SPACES:
        raise ConfigError(f"unknown model family {family!r}")
    space = dict(DEFAULT_SPACES[family])
    for name, value in (overrides or {}).items():
        space[name] = value if isinstance(value, ParamRange) else ParamRange.model_validate(value)
    return space


def suggest_params(
    trial: optuna.Trial, family: str, overrides: Mapping[str, ParamRange] | None = None
) -> dict[str, Any]:
    """Sample the family's estimator parameters in ``trial``.

    Optuna parameter names are ``"<family>__<param>"`` so conditional spaces never collide
    (``min_samples_leaf`` of HGB and of random forests differ); the returned keys are the
    plain estimator parameter names.

    Args:
        trial: the Optuna trial.
        family: the model family.
        overrides: ranges for this family from ``config.search.spaces[family]``.
    """
    params: dict[str, Any] = {}
    for name, value_range in search_space(family, overrides).items():
        key = f"{family}__{name}"
        if value_range.integer:
            params[name] = trial.suggest_int(
                key, math.ceil(value_range.low), math.floor(value_range.high), log=value_range.log
            )
        elif value_range.low == value_range.high:
            params[name] = trial.suggest_float(key, value_range.low, value_range.high)
        else:
            params[name] = trial.suggest_float(
                key, value_range.low, value_range.high, log=value_range.log
            )
    return params


def _portfolio_trials(
    family: str, overrides: Mapping[str, ParamRange] | None
) -> list[dict[str, Any]]:
    """The family's :data:`PORTFOLIO` as Optuna trial parameters, clipped to its ranges."""
    space = search_space(family, overrides)
    trials = []
    for entry in PORTFOLIO.get(family, [{}]):
        params: dict[str, Any] = {"family": family}
        for name, value_range in space.items():
            if name not in entry:
                continue  # a parameter only the user's space has: let the sampler choose
            value = min(max(entry[name], value_range.low), value_range.high)
            params[f"{family}__{name}"] = int(round(value)) if value_range.integer else float(value)
        if params not in trials:
            trials.append(params)
    return trials


# --------------------------------------------------------------------------- search


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
            name = _member_name(member)
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


def _member_name(member: Mapping[str, Any]) -> str:
    return f"{member['family']}_{member['trial']}"


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
class _CrossValidation:
    """The fixed rows and folds every trial and blend of one search is scored on."""

    features: pd.DataFrame
    target: pd.Series
    folds: list[tuple[np.ndarray, np.ndarray]]
    config: ProjectConfig
    metric: str
    classes: np.ndarray | None  # sorted labels (classification), None for regression

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
        stored = _StoredPredictions(predictions, self.classes)
        features = self.features.iloc[rows]
        scores = compute_metrics(
            stored, features, self.target.iloc[rows], self.config, [self.metric]
        )
        return float(scores[self.metric])

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
            fitted = _fit_quietly(
                clone(pipeline), self.features.iloc[train_rows], self.target.iloc[train_rows]
            )
            predictions[valid_rows] = self.fold_predictions(fitted, valid_rows)
            fold_scores.append(self.score(predictions[valid_rows], valid_rows))
            if on_fold is not None:
                on_fold(step, fold_scores)
        return float(np.mean(fold_scores)), predictions


def run_search(
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    storage: str | None,
    study_name: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    max_threads: int | None = None,
    sampler_seed: int | None = None,
    ensemble: bool | None = None,
) -> SearchResult:
    """Search families and hyperparameters by cross-validation with Optuna, then blend.

    The family is a categorical parameter with conditional spaces. Each family's
    :data:`PORTFOLIO` is enqueued first (first entries of every family, then second ones...),
    so every family is scored at least once from a strong start; TPE (seeded) then explores,
    and a median pruner stops trials whose running mean over the folds falls behind. Every
    trial sees the same folds of at most ``config.search.max_training_rows`` rows.

    Then, unless disabled, greedy ensemble selection (with replacement) over the out-of-fold
    predictions of the best trial of each family and the best trials overall picks integer
    weights; the blend is kept only when its mean CV score beats the best single trial's.

    The time budget covers trials and blending: trials start until
    ``(1 - ENSEMBLE_TIME_SHARE)`` of it has passed, a running trial stops between folds after
    that point (once some trial completed), and blending recomputes missing out-of-fold
    predictions (trials of other processes) only while the budget lasts.

    The study is created or resumed (``load_if_exists``) in ``storage``: an RDB URL such as
    ``sqlite:///path/optuna.db`` or PostgreSQL, or ``None`` for memory. Resuming tops the study
    up to ``n_trials`` finished trials, so a rerun after a crash does only the missing ones;
    several processes can share one study. Use a new ``study_name`` for new data.

    Args:
        features: the training rows (extra columns are ignored).
        target: the target, aligned with ``features``.
        config: the project config (columns, task, search and split settings).
        storage: Optuna storage URL, or ``None``.
        study_name: the study's name in the storage.
        n_trials: total finished trials wanted; defaults to ``config.search.trials``.
        timeout: seconds the whole call may take (trials and blending); defaults to
            ``config.search.timeout_seconds``.
        on_trial: called after each trial with ``number``, ``family``, ``value``, ``state``,
            ``elapsed`` (seconds of the trial), ``search_elapsed`` (seconds since the search
            started), ``best_value``, ``best_family``, ``params``; and once after blending with
            ``family="ensemble"``, ``number=None`` and ``state`` ``CHOSEN`` or ``REJECTED``.
        max_threads: cap on native (OpenMP/BLAS) threads during the search; ``None`` keeps
            the libraries' default (all cores). Use 1 when trials run in parallel or the
            machine is shared: HGB's OpenMP threads slow down many-fold when oversubscribed.
        sampler_seed: TPE's seed (default: ``config.split.random_state``); give each process
            sharing one study its own.
        ensemble: try a blend (default: ``config.search.ensemble``); processes that only add
            trials to a shared study pass ``False`` and leave it to the one that collects.

    Raises:
        ConfigError: unknown metric or families unsuited to the task.
        DataError: the target has missing values or does not fit the task.
        LoopmlError: no trial completed (the message carries the first failure).
    """
    started = time.perf_counter()
    metric = check_metric(config.search_metric, config)
    direction = metric_direction(metric)
    families = search_families(config)
    features, target = _checked_training_data(features, target, config)
    search_features, search_target = _subsample(
        features, target, config.search.max_training_rows, config
    )
    folds = list(_cv_splitter(config).split(search_features, search_target))
    total_trials = config.search.trials if n_trials is None else n_trials
    time_limit = config.search.timeout_seconds if timeout is None else timeout
    deadline = None if time_limit is None else started + time_limit
    trials_deadline = (
        None if time_limit is None else started + time_limit * (1 - ENSEMBLE_TIME_SHARE)
    )
    seed = config.split.random_state
    encoded = high_cardinality_columns(search_features, config.columns.categorical)
    cv = _CrossValidation(
        features=search_features,
        target=search_target,
        folds=folds,
        config=config,
        metric=metric,
        classes=np.unique(search_target) if config.task == "classification" else None,
    )

    def make_pipeline(family: str, params: Mapping[str, Any]) -> Pipeline:
        return _pipeline_for(config, family, params, encoded)

    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        # Shards sharing a study need their own seeds, or they propose the same trials.
        sampler=optuna.samplers.TPESampler(seed=seed if sampler_seed is None else sampler_seed),
        # Let every family's first portfolio trial finish before anything is pruned.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=len(families)),
    )
    portfolios = [
        _portfolio_trials(family, config.search.spaces.get(family)) for family in families
    ]
    for rank in range(max(len(entries) for entries in portfolios)):
        for entries in portfolios:
            if rank < len(entries):
                study.enqueue_trial(entries[rank], skip_if_exists=True)
    predictions_of: dict[int, np.ndarray] = {}

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", families)
        params = suggest_params(trial, family, config.search.spaces.get(family))

        def on_fold(step: int, fold_scores: list[float]) -> None:
            trial.report(float(np.mean(fold_scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
            late = trials_deadline is not None and time.perf_counter() > trials_deadline
            if late and step + 1 < len(folds) and _best_complete(study) is not None:
                trial.set_user_attr("stopped", "time budget")
                raise optuna.TrialPruned()

        try:
            value, predictions = cv.run(make_pipeline(family, params), on_fold)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        predictions_of[trial.number] = predictions
        return value

    def report(info: dict[str, Any]) -> None:
        if on_trial is not None:
            on_trial({**info, "search_elapsed": time.perf_counter() - started})

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = _best_complete(study)
        report(
            {
                "number": trial.number,
                "family": trial.params.get("family"),
                "value": trial.value,
                "state": trial.state.name,
                "elapsed": trial.duration.total_seconds() if trial.duration else None,
                "params": _plain_params(trial.params),
                "best_value": best.value if best else None,
                "best_family": best.params.get("family") if best else None,
            }
        )

    remaining = max(0, total_trials - _finished_count(study))
    if remaining:
        trial_time = (
            None if trials_deadline is None else max(trials_deadline - time.perf_counter(), 1.0)
        )
        with threadpool_limits(limits=max_threads):
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=trial_time,
                # A failing trial (odd params, a degenerate fold) must not end the search.
                catch=(Exception,),
                callbacks=[
                    after_trial,
                    # Stops this process when other workers on the same study finished the total.
                    optuna.study.MaxTrialsCallback(
                        total_trials,
                        states=(
                            optuna.trial.TrialState.COMPLETE,
                            optuna.trial.TrialState.PRUNED,
                            optuna.trial.TrialState.FAIL,
                        ),
                    ),
                ],
            )
    result = _search_result(study, metric, direction, len(search_features), started)
    result.high_cardinality = encoded
    blend = config.search.ensemble if ensemble is None else ensemble
    if blend:
        blend_started = time.perf_counter()
        with threadpool_limits(limits=max_threads):
            chosen = _blend(study, cv, predictions_of, make_pipeline, deadline)
        if chosen is not None:
            members, score, predictions = chosen
            result.ensemble_cv_score = score
            accepted = len(members) > 1 and _improves(
                score, result.best_cv_score, metric, by_share=ENSEMBLE_MIN_GAIN
            )
            if accepted:
                result.ensemble = members
                result.oof_predictions = predictions
                result.oof_index = search_features.index
            report(
                {
                    "number": None,
                    "family": "ensemble",
                    "value": score,
                    "state": "CHOSEN" if accepted else "REJECTED",
                    "elapsed": time.perf_counter() - blend_started,
                    "params": {_member_name(m): m["weight"] for m in members},
                    "best_value": result.champion_cv_score,
                    "best_family": result.champion_family,
                }
            )
    best = _best_complete(study)
    if not result.ensemble and best is not None and best.number in predictions_of:
        result.oof_predictions = predictions_of[best.number]
        result.oof_index = search_features.index
    result.elapsed_seconds = time.perf_counter() - started
    return result


def _pipeline_for(
    config: ProjectConfig, family: str, params: Mapping[str, Any], encoded: list[str]
) -> Pipeline:
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


def _blend(
    study: optuna.Study,
    cv: _CrossValidation,
    predictions_of: dict[int, np.ndarray],
    make_pipeline: Callable[[str, Mapping[str, Any]], Pipeline],
    deadline: float | None,
) -> tuple[list[dict[str, Any]], float, np.ndarray] | None:
    """Greedy ensemble selection (Caruana et al. 2004) over the best trials' fold predictions.

    Candidates: the best complete trial of each family, then the best others, up to
    :data:`ENSEMBLE_CANDIDATES`. Starting from the best single candidate, each round adds (with
    replacement) the candidate whose inclusion gives the best mean fold score of the averaged
    predictions; the best blend seen wins, its weights being how often each member was added.

    Returns:
        ``(members, mean CV score, blended out-of-fold predictions)``, or ``None`` when fewer
        than two candidates have out-of-fold predictions within the time budget.
    """
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    complete = [
        trial
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if trial.value is not None and np.isfinite(trial.value)
    ]
    complete.sort(key=lambda trial: trial.value, reverse=maximize)
    chosen: list[optuna.trial.FrozenTrial] = []
    for trial in complete:  # the best of each family first
        if all(trial.params["family"] != other.params["family"] for other in chosen):
            chosen.append(trial)
    for trial in complete:
        if len(chosen) >= ENSEMBLE_CANDIDATES:
            break
        if trial not in chosen and trial.number in predictions_of:
            chosen.append(trial)
    candidates: dict[int, np.ndarray] = {}
    for trial in chosen[:ENSEMBLE_CANDIDATES]:
        if trial.number not in predictions_of:
            # A trial of another process (shared study): refit its folds if time allows.
            needed = trial.duration.total_seconds() if trial.duration else 0.0
            if deadline is not None and time.perf_counter() + needed > deadline:
                continue
            family = trial.params["family"]
            pipeline = make_pipeline(family, _plain_params(trial.params))
            try:
                _, predictions_of[trial.number] = cv.run(pipeline)
            except Exception:  # noqa: BLE001 - a candidate that fails now is just left out
                continue
        candidates[trial.number] = predictions_of[trial.number]
    if len(candidates) < 2:
        return None

    def better(new: float, old: float) -> bool:
        return _improves(new, old, cv.metric)

    numbers = list(candidates)
    singles = {number: cv.mean_score(candidates[number]) for number in numbers}
    first = numbers[0]
    for number in numbers[1:]:
        if better(singles[number], singles[first]):
            first = number
    counts = {first: 1}
    total = candidates[first].copy()
    best_score, best_counts = singles[first], dict(counts)
    for _ in range(ENSEMBLE_ROUNDS):
        if deadline is not None and time.perf_counter() > deadline:
            break
        size = sum(counts.values()) + 1
        round_best: tuple[float, int] | None = None
        for number in numbers:
            score = cv.mean_score((total + candidates[number]) / size)
            if round_best is None or better(score, round_best[0]):
                round_best = (score, number)
        if round_best is None or not np.isfinite(round_best[0]):
            break
        score, number = round_best
        total += candidates[number]
        counts[number] = counts.get(number, 0) + 1
        if better(score, best_score):
            best_score, best_counts = score, dict(counts)
    trials = {trial.number: trial for trial in chosen}
    members = [
        {
            "trial": number,
            "family": trials[number].params["family"],
            "params": _plain_params(trials[number].params),
            "weight": weight,
        }
        for number, weight in sorted(best_counts.items())
    ]
    weights = sum(best_counts.values())
    blended = sum(candidates[number] * weight for number, weight in best_counts.items()) / weights
    return members, float(best_score), blended


def _improves(new: float, old: float, metric: str, *, by_share: float = 0.0) -> bool:
    """Whether ``new`` is better than ``old`` in the metric's direction by more than
    ``by_share`` of ``|old|`` (strictly better when 0; NaN never is)."""
    if not np.isfinite(new):
        return False
    gain = new - old if metric_direction(metric) == "maximize" else old - new
    return gain > by_share * abs(old) if np.isfinite(old) else True


def _fit_quietly(
    pipeline: Pipeline, features: pd.DataFrame, target: pd.Series, **fit_params: Any
) -> Pipeline:
    with warnings.catch_warnings():
        # A short lbfgs run on a bad C is scored like any other trial; the warning adds noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipeline.fit(features, target, **fit_params)


def _finished_count(study: optuna.Study) -> int:
    finished = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    return len(study.get_trials(deepcopy=False, states=finished))


def _best_complete(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    complete = [trial for trial in complete if trial.value is not None]
    if not complete:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda trial: trial.value)


def _plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name.split("__", 1)[1]: value for name, value in params.items() if name != "family"}


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


def _search_result(
    study: optuna.Study, metric: str, direction: str, rows_searched: int, started: float
) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    best = _best_complete(study)
    if best is None:
        errors = [t.user_attrs.get("error") for t in trials if t.user_attrs.get("error")]
        reason = f": first failure: {errors[0]}" if errors else ""
        raise LoopmlError(
            f"the search finished no trial in study {study.study_name!r} ({len(trials)} started)"
            f"{reason}"
        )
    states = optuna.trial.TrialState
    per_family_best: dict[str, float] = {}
    rows = []
    for trial in trials:
        family = trial.params.get("family")
        if trial.state == states.COMPLETE and trial.value is not None:
            current = per_family_best.get(family)
            better = current is None or (
                trial.value > current if direction == "maximize" else trial.value < current
            )
            if better:
                per_family_best[family] = float(trial.value)
        if trial.state in (states.COMPLETE, states.PRUNED, states.FAIL):
            rows.append(
                {
                    "number": trial.number,
                    "family": family,
                    "value": trial.value,
                    "state": trial.state.name,
                    "duration_seconds": (
                        trial.duration.total_seconds() if trial.duration else np.nan
                    ),
                    "params": _plain_params(trial.params),
                }
            )
    table = pd.DataFrame(
        rows, columns=["number", "family", "value", "state", "duration_seconds", "params"]
    )
    return SearchResult(
        best_family=best.params["family"],
        best_params=_plain_params(best.params),
        best_cv_score=float(best.value),
        metric=metric,
        direction=direction,
        n_trials=len(rows),
        n_complete=int((table["state"] == "COMPLETE").sum()),
        n_pruned=int((table["state"] == "PRUNED").sum()),
        per_family_best=per_family_best,
        trials=table,
        study_name=study.study_name,
        rows_searched=rows_searched,
        elapsed_seconds=time.perf_counter() - started,
    )


def _checked_training_data(
    features: pd.DataFrame, target: pd.Series, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.Series]:
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


def _subsample(
    features: pd.DataFrame, target: pd.Series, max_rows: int | None, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.Series]:
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


def _cv_splitter(config: ProjectConfig) -> KFold | StratifiedKFold:
    folds = config.split.cv_folds
    seed = config.split.random_state
    if config.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def best_pipeline(result: SearchResult, config: ProjectConfig) -> Pipeline | BaseEstimator:
    """The search's champion as an unfitted estimator.

    The best single pipeline, or, when the search kept a blend, a soft-voting
    ``VotingClassifier`` / averaging ``VotingRegressor`` over the members' pipelines with the
    blend's integer weights: still one scikit-learn estimator (``predict_proba`` included),
    fitted, registered and served like a pipeline.
    """
    if not result.ensemble:
        return _pipeline_for(
            config, result.best_family, result.best_params, result.high_cardinality
        )
    members = [
        (
            _member_name(member),
            _pipeline_for(config, member["family"], member["params"], result.high_cardinality),
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

    ``max_threads`` caps native threads as in :func:`run_search`. ``sample_weight`` (one per
    row, e.g. a recency-weighted retraining) goes to the pipeline's estimator as
    ``model__sample_weight``, or to a blend's ``fit`` when it takes ``sample_weight``.
    """
    features, target = _checked_training_data(features, target, config)
    model = best_pipeline(result, config)
    fit_params: dict[str, Any] = {}
    if sample_weight is not None:
        if isinstance(model, Pipeline) and "model" in model.named_steps:
            fit_params = {"model__sample_weight": sample_weight}
        elif "sample_weight" in inspect.signature(model.fit).parameters:
            fit_params = {"sample_weight": sample_weight}
    with threadpool_limits(limits=max_threads):
        return _fit_quietly(model, features, target, **fit_params)


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
        max_threads: cap on native threads, as in :func:`run_search`.

    Returns:
        Probabilities aligned with ``target``.

    Raises:
        ConfigError: the project is not binary classification.
    """
    if not config.is_binary:
        raise ConfigError("out-of-fold positive-class scores need a binary classification project")
    features, target = _checked_training_data(features, target, config)
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
            estimator, features, target, cv=_cv_splitter(config), method="predict_proba"
        )
    return probabilities[:, positive_index]
