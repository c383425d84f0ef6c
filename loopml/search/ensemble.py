"""Greedy ensemble selection (Caruana et al., ICML 2004) over the best trials of a search."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
from sklearn.pipeline import Pipeline

from loopml.metrics import metric_direction
from loopml.search.cross_validation import CrossValidation
from loopml.search.spaces import plain_params

# Share of the time budget kept for ensemble selection and the final refit.
ENSEMBLE_TIME_SHARE = 0.2
# Greedy ensemble selection: rounds (with replacement) and candidates (best trials) it draws on.
ENSEMBLE_ROUNDS = 20
ENSEMBLE_CANDIDATES = 6


def select_blend(
    study: optuna.Study,
    cv: CrossValidation,
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
            pipeline = make_pipeline(family, plain_params(trial.params))
            try:
                _, predictions_of[trial.number] = cv.run(pipeline)
            except Exception:  # noqa: BLE001 - a candidate that fails now is just left out
                continue
        candidates[trial.number] = predictions_of[trial.number]
    if len(candidates) < 2:
        return None

    def better(new: float, old: float) -> bool:
        return improves(new, old, cv.metric)

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
            "params": plain_params(trials[number].params),
            "weight": weight,
        }
        for number, weight in sorted(best_counts.items())
    ]
    weights = sum(best_counts.values())
    blended = sum(candidates[number] * weight for number, weight in best_counts.items()) / weights
    return members, float(best_score), blended


def improves(new: float, old: float, metric: str, *, by_share: float = 0.0) -> bool:
    """Whether ``new`` is better than ``old`` in the metric's direction by more than
    ``by_share`` of ``|old|`` (strictly better when 0; NaN never is)."""
    if not np.isfinite(new):
        return False
    gain = new - old if metric_direction(metric) == "maximize" else old - new
    return gain > by_share * abs(old) if np.isfinite(old) else True
