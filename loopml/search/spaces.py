"""Search spaces: each model family's parameter ranges and how an Optuna trial samples them.

Optuna parameter names are ``"<family>__<param>"``; :func:`plain_params` turns them back into
estimator parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna

from loopml.config import ParamRange
from loopml.errors import ConfigError

# Ranges sized for 2 cores and small-to-medium tables; config.search.spaces overrides them.
DEFAULT_SPACES: dict[str, dict[str, ParamRange]] = {
    "logistic": {"C": ParamRange(low=1e-3, high=100.0, log=True)},
    "ridge": {"alpha": ParamRange(low=1e-3, high=1e3, log=True)},
    "logistic_spline": {"C": ParamRange(low=1e-3, high=100.0, log=True)},
    "ridge_spline": {"alpha": ParamRange(low=1e-3, high=1e3, log=True)},
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


def plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's estimator parameters under their plain names (the ``family`` choice dropped)."""
    return {name.split("__", 1)[1]: value for name, value in params.items() if name != "family"}
