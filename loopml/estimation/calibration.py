"""CBPE's calibration: a monotone map from a class's scores to calibrated probabilities.

Maps are plain JSON (stored with the model version); three methods, chosen per class by
cross-validated log loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CALIBRATION_METHODS = ("identity", "sigmoid", "isotonic")
CALIBRATION_FOLDS = 5
# Scores are clipped this far from 0 and 1 before the logit (a tree can output exactly 0 or 1).
LOGIT_EPSILON = 1e-6


def fit_calibration(
    scores: np.ndarray, outcomes: np.ndarray, method: str | None = None
) -> dict[str, Any]:
    """A map from a class's scores to calibrated probabilities, as JSON.

    Three candidates, each a monotone map (so the rows' order, and the realised ROC-AUC, is
    the model's own): ``identity`` (the scores are already calibrated), ``sigmoid`` (Platt's
    logistic regression on the score's logit: two parameters, smooth) and ``isotonic`` (any
    monotone shape, as a step function whose steps are coarse where positives are few). With
    ``method`` None the one with the lowest cross-validated log loss on these rows is kept — a
    proper scoring rule judges calibration, and held-out folds keep the flexible isotonic map
    from winning by fitting noise. NannyML always fits isotonic; on a few hundred or thousand
    held-out rows its steps cost accuracy where the sigmoid holds (docs/monitoring.md).

    Args:
        scores: the model's scores for the class.
        outcomes: 1 where the row is of the class, else 0.
        method: one of :data:`CALIBRATION_METHODS`, or None to choose by cross-validation.
    """
    scores, outcomes = np.asarray(scores, dtype=float), np.asarray(outcomes, dtype=float)
    if method is None:
        method = select_calibration(scores, outcomes)
    if method == "identity":
        return {"method": "identity"}
    if method == "sigmoid":
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(outcomes)) < 2:  # one class only: the map is that constant
            return _isotonic_map(scores, outcomes)
        logistic = LogisticRegression(C=1e6, max_iter=1_000)  # no shrinkage: 2 parameters
        logistic.fit(_logit(scores)[:, None], outcomes)
        return {
            "method": "sigmoid",
            "slope": float(logistic.coef_[0, 0]),
            "intercept": float(logistic.intercept_[0]),
        }
    return _isotonic_map(scores, outcomes)


def select_calibration(scores: np.ndarray, outcomes: np.ndarray) -> str:
    """The calibration method with the lowest out-of-fold log loss (ties: the simpler one).

    Fewer than two rows of either outcome leave nothing to cross-validate: isotonic, as before.
    """
    from sklearn.model_selection import StratifiedKFold

    outcomes = np.asarray(outcomes, dtype=int)
    folds = min(CALIBRATION_FOLDS, int(np.bincount(outcomes, minlength=2).min()))
    if folds < 2:
        return "isotonic"
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    losses = {}
    for method in CALIBRATION_METHODS:
        total = 0.0
        for fitted, judged in splitter.split(scores[:, None], outcomes):
            knots = fit_calibration(scores[fitted], outcomes[fitted], method)
            probabilities = np.clip(apply_calibration(scores[judged], knots), 1e-6, 1 - 1e-6)
            truth = outcomes[judged]
            total -= float(
                np.sum(truth * np.log(probabilities) + (1 - truth) * np.log(1 - probabilities))
            )
        losses[method] = total
    return min(CALIBRATION_METHODS, key=losses.__getitem__)  # a tie keeps the simpler one


def _isotonic_map(scores: np.ndarray, outcomes: np.ndarray) -> dict[str, Any]:
    """Isotonic regression's knots; applying them is a linear interpolation between the knots,
    exactly what scikit-learn's ``IsotonicRegression.predict`` does."""
    from sklearn.isotonic import IsotonicRegression

    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    isotonic.fit(scores, outcomes)
    return {
        "method": "isotonic",
        "x": [float(v) for v in isotonic.X_thresholds_],
        "y": [float(v) for v in isotonic.y_thresholds_],
    }


def apply_calibration(scores: np.ndarray, knots: dict[str, Any]) -> np.ndarray:
    """Calibrated probabilities; a map without ``method`` is isotonic knots (the stored format
    before the method was chosen)."""
    scores = np.asarray(scores, dtype=float)
    method = knots.get("method", "isotonic")
    if method == "identity":
        return np.clip(scores, 0.0, 1.0)
    if method == "sigmoid":
        from scipy.special import expit  # the logistic function, without exp's overflow

        return expit(knots["slope"] * _logit(scores) + knots["intercept"])
    return np.interp(scores, knots["x"], knots["y"])


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=float), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return np.log(clipped / (1 - clipped))


def calibrated_probabilities(probabilities: np.ndarray, maps: list[dict[str, Any]]) -> np.ndarray:
    """Per-class calibrated probabilities; several classes are renormalised to sum to one."""
    if len(maps) == 1:  # binary: the positive class's map
        return apply_calibration(probabilities, maps[0])
    calibrated = np.column_stack(
        [apply_calibration(probabilities[:, i], knots) for i, knots in enumerate(maps)]
    )
    totals = calibrated.sum(axis=1, keepdims=True)
    uniform = np.full_like(calibrated, 1.0 / calibrated.shape[1])
    return np.where(totals > 0, calibrated / np.where(totals > 0, totals, 1.0), uniform)
