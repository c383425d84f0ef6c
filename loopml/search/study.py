"""The search itself: an Optuna study across model families, then the blend."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from loopml.config import ProjectConfig
from loopml.credentials import sqlite_creation_lock
from loopml.errors import LoopmlError
from loopml.evaluation import check_metric
from loopml.metrics import metric_direction
from loopml.modeling import high_cardinality_columns, search_families
from loopml.search.cross_validation import (
    CrossValidation,
    checked_training_data,
    cv_splitter,
    subsample,
)
from loopml.search.ensemble import (
    ENSEMBLE_TIME_SHARE,
    improves,
    select_blend,
)
from loopml.search.fit import pipeline_for
from loopml.search.portfolio import portfolio_trials
from loopml.search.result import SearchResult, member_name
from loopml.search.spaces import plain_params, suggest_params


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """Optuna's storage at ``url`` (``None``: in memory), opened under the SQLite creation lock:
    a new SQLite file gets its tables from one process, not from two first trainings at once."""
    if url is None:
        return None
    with sqlite_creation_lock(url):
        return optuna.storages.RDBStorage(url)


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

    The family is a categorical parameter with conditional spaces. Each family's portfolio
    (:data:`~loopml.search.portfolio.PORTFOLIO`) is enqueued first (first entries of every
    family, then second ones...), so every family is scored at least once from a strong start;
    TPE (seeded) then explores, and a median pruner stops trials whose running mean over the
    folds falls behind. Every trial sees the same folds of at most
    ``config.search.max_training_rows`` rows.

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
    features, target = checked_training_data(features, target, config)
    search_features, search_target = subsample(
        features, target, config.search.max_training_rows, config
    )
    folds = list(cv_splitter(config).split(search_features, search_target))
    total_trials = config.search.trials if n_trials is None else n_trials
    time_limit = config.search.timeout_seconds if timeout is None else timeout
    deadline = None if time_limit is None else started + time_limit
    trials_deadline = (
        None if time_limit is None else started + time_limit * (1 - ENSEMBLE_TIME_SHARE)
    )
    seed = config.split.random_state
    encoded = high_cardinality_columns(search_features, config.columns.categorical)
    cv = CrossValidation(
        features=search_features,
        target=search_target,
        folds=folds,
        config=config,
        metric=metric,
        classes=np.unique(search_target) if config.task == "classification" else None,
    )

    def make_pipeline(family: str, params: Mapping[str, Any]) -> Pipeline:
        return pipeline_for(config, family, params, encoded)

    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        # Shards sharing a study need their own seeds, or they propose the same trials.
        sampler=optuna.samplers.TPESampler(seed=seed if sampler_seed is None else sampler_seed),
        # Let every family's first portfolio trial finish before anything is pruned.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=len(families)),
    )
    portfolios = [portfolio_trials(family, config.search.spaces.get(family)) for family in families]
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
                "params": plain_params(trial.params),
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
            chosen = select_blend(study, cv, predictions_of, make_pipeline, deadline)
        if chosen is not None:
            members, score, predictions = chosen
            result.ensemble_cv_score = score
            accepted = len(members) > 1 and improves(
                score, result.best_cv_score, metric, by_share=config.search.ensemble_min_gain
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
                    "params": {member_name(m): m["weight"] for m in members},
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
                    "params": plain_params(trial.params),
                }
            )
    table = pd.DataFrame(
        rows, columns=["number", "family", "value", "state", "duration_seconds", "params"]
    )
    return SearchResult(
        best_family=best.params["family"],
        best_params=plain_params(best.params),
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
