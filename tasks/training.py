"""Search, fit and evaluate: thin Prefect wrappers over loopml.modeling and loopml.evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import evaluation, modeling
from loopml.comparison import Scorer, compare_models
from loopml.config import ProjectConfig
from loopml.features import prepare_features, prepare_target, split_holdout
from loopml.figures import render_ahead
from loopml.gate import GateDecision, decide_promotion
from loopml.registry import CHAMPION, version_by_alias
from loopml.runtime import Runtime
from loopml.search.fit import fit_best, out_of_fold_scores
from loopml.search.study import run_search
from tasks.artifacts import artifact_key, markdown_table
from tasks.models import load_checked


@dataclass
class TrainedModel:
    """A fitted candidate and what is known about it before registration.

    ``model`` predicts with its decision threshold inside (binary); ``threshold`` repeats it
    for display (the version tag, the run's params, the flow's result).
    """

    model: Any
    family: str
    params: dict[str, Any]
    threshold: float | None
    search: Any
    cv_metrics: dict[str, float]


@task(name="split", cache_policy=NO_CACHE)
def split_data(runtime: Runtime, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    train, test = split_holdout(frame, runtime.config)
    get_run_logger().info("split: %d training rows, %d held-out rows", len(train), len(test))
    return train, test


@task(name="search", cache_policy=NO_CACHE)
def search_models(
    runtime: Runtime,
    train: pd.DataFrame,
    *,
    study_name: str,
    trials: int | None,
    timeout: float | None,
) -> Any:
    """Optuna search across algorithm families; progress goes to the run log."""
    logger = get_run_logger()
    config = runtime.config
    result = run_search(
        prepare_features(train, config),
        prepare_target(train, config),
        config,
        storage=runtime.settings.optuna_storage,
        study_name=study_name,
        n_trials=trials,
        timeout=timeout,
        on_trial=trial_reporter(logger, config.search_metric),
        max_threads=runtime.settings.max_threads,
    )
    publish_search(config, result, logger)
    return result


def trial_reporter(logger: Any, metric: str) -> Callable[[dict[str, Any]], None]:
    """An ``on_trial`` callback for :func:`loopml.search.study.run_search` that logs each trial."""

    def report(info: dict[str, Any]) -> None:
        value = info.get("value")
        total = info.get("search_elapsed") or 0.0
        if info.get("family") == "ensemble":
            logger.info(
                "ensemble of %s: %s=%.4f, %s [%.1fs, %.0fs into the search]",
                ", ".join(f"{name} x{weight}" for name, weight in info.get("params", {}).items()),
                metric,
                value,
                "chosen" if info.get("state") == "CHOSEN" else "not better than the best single",
                info.get("elapsed") or 0.0,
                total,
            )
            return
        pruned = info.get("state") == "PRUNED" or value is None
        shown = "pruned" if pruned else f"{metric}={value:.4f}"
        logger.info(
            "trial %s (%s): %s [%.1fs, %.0fs into the search]",
            info.get("number"),
            info.get("family"),
            shown,
            info.get("elapsed") or 0.0,
            total,
        )

    return report


def publish_search(config: ProjectConfig, result: Any, logger: Any) -> None:
    """The search's per-family table artifact and summary log line."""
    rows = [
        {"family": family, f"best cv {result.metric}": score}
        for family, score in sorted(result.per_family_best.items())
    ]
    create_table_artifact(
        key=artifact_key(config.name, "search"),
        table=rows,
        description=(
            f"{result.n_trials} trials ({result.n_pruned} pruned); best {result.champion_family} "
            f"cv {result.metric}={result.champion_cv_score:.4f}"
        ),
    )
    logger.info(
        "search done: %d trials, %d pruned, best %s (%s=%.4f) in %.0fs",
        result.n_trials,
        result.n_pruned,
        result.champion_family,
        result.metric,
        result.champion_cv_score,
        result.elapsed_seconds,
    )


@task(name="fit", cache_policy=NO_CACHE)
def fit_candidate(
    runtime: Runtime, train: pd.DataFrame, search: Any, sample_weight: Any = None
) -> TrainedModel:
    """Fit the best pipeline on all training rows; choose the decision threshold out of fold.

    ``sample_weight`` (one per row) weights the fit, e.g. by recency after a drift.
    """
    config = runtime.config
    features = prepare_features(train, config)
    target = prepare_target(train, config)
    threads = runtime.settings.max_threads
    model = fit_best(
        features, target, search, config, max_threads=threads, sample_weight=sample_weight
    )
    threshold = None
    if config.is_binary:
        scores = out_of_fold_scores(search, features, target, config, max_threads=threads)
        threshold = evaluation.choose_threshold(target, scores, config.positive_label)
        model = modeling.with_threshold(model, threshold, config.positive_label)
        get_run_logger().info("decision threshold %.3f chosen on out-of-fold scores", threshold)
    return TrainedModel(
        model=model,
        family=search.champion_family,
        params=search.champion_params,
        threshold=threshold,
        search=search,
        cv_metrics={f"cv_{search.metric}": float(search.champion_cv_score)},
    )


@dataclass
class Evaluation:
    """What a candidate was fitted and judged on, and what the judging found: registration
    and documentation log all of it."""

    train: pd.DataFrame
    test: pd.DataFrame
    metrics: dict[str, float]
    figures: dict[str, Any]
    importances: dict[str, float]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_candidate(
    runtime: Runtime, candidate: TrainedModel, train: pd.DataFrame, test: pd.DataFrame
) -> Evaluation:
    """Held-out metrics, figures and permutation importances of the candidate fitted on
    ``train``."""
    config = runtime.config
    features = prepare_features(test, config)
    target = prepare_target(test, config)
    metrics = evaluation.evaluate(candidate.model, features, target, config)
    importances = evaluation.permutation_importances(candidate.model, features, target, config)
    figures = evaluation.evaluation_figures(
        candidate.model, features, target, config, importances=importances
    )
    render_ahead(figures.values())  # drawn by the worker while the champion is compared
    create_markdown_artifact(
        key=artifact_key(config.name, "evaluation"),
        markdown=(
            f"# Held-out evaluation: {candidate.family}\n\n"
            + markdown_table([{"metric": k, "value": v} for k, v in sorted(metrics.items())])
        ),
        description=f"{config.name}: {len(test)} held-out rows",
    )
    return Evaluation(train, test, metrics, figures, importances)


@dataclass
class Judgement:
    """A gate decision and the champion it was made against (``None``: there was none).

    The gate moves ``champion`` only if it still is that version (compare-and-set).
    """

    decision: GateDecision
    champion_version: str | None


@task(name="compare-with-champion", cache_policy=NO_CACHE)
def compare_with_champion(
    runtime: Runtime,
    candidate: TrainedModel,
    candidate_metrics: dict[str, float],
    test: pd.DataFrame,
) -> Judgement:
    """Score the current champion on the candidate's held-out rows and decide promotion.

    A registry that cannot be read raises (fail closed): only a champion alias that really does
    not exist lets the first version through as "no champion yet".
    """
    champion = version_by_alias(runtime.mlflow, runtime.name, CHAMPION)
    return Judgement(
        decision=judge_against(runtime, candidate, candidate_metrics, test, champion),
        champion_version=None if champion is None else str(champion.version),
    )


def judge_against(
    runtime: Runtime,
    candidate: TrainedModel,
    candidate_metrics: dict[str, float],
    test: pd.DataFrame,
    champion: ModelVersion | None,
) -> GateDecision:
    """The gate decision of a candidate against ``champion`` on the candidate's held-out rows.

    The difference is bootstrapped on those same rows: a candidate is promoted over a champion
    only when it is better with confidence (``gate.alpha``).
    """
    config = runtime.config
    metric = config.gate_metric
    if champion is None:
        return decide_promotion(
            candidate_metrics[metric],
            None,
            metric=metric,
            min_improvement=config.gate.min_improvement,
        )
    paired = compare_models(
        Scorer(candidate.model),
        Scorer(load_checked(runtime, champion), str(champion.version)),
        test,
        config,
        metric=metric,
        alpha=config.gate.alpha,
        resamples=config.gate.bootstrap_resamples,
    )
    return decide_promotion(
        paired.candidate,
        paired.champion,
        metric=metric,
        min_improvement=config.gate.min_improvement,
        paired=paired,
    )
