"""The portfolio: configurations known to do well on tabular data, tried first in each family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loopml.config import ParamRange
from loopml.search.spaces import search_space

# The first trials of each family (enqueued, in this order, before TPE proposes anything):
# configurations known to do well on tabular data, clipped to the family's ranges.
# - logistic / ridge: scikit-learn's default (C=1, alpha=1), then a more regularised one
#   (the usual first step of a log-scale grid).
# - logistic_spline / ridge_spline: the same two, on scikit-learn's ``SplineTransformer``
#   defaults (5 knots, cubic; its "Time-related feature engineering" example's spline
#   features) placed at quantiles: a penalised additive model in the style of P-splines
#   (Eilers & Marx 1996), which the penalty C / alpha smooths.
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
    "logistic_spline": [{"C": 1.0}, {"C": 0.1}],
    "ridge_spline": [{"alpha": 1.0}, {"alpha": 10.0}],
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


def portfolio_trials(
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
