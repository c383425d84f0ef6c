"""How far the loop brought the model back after a drift: stale, loop and oracle error.

recovery = (stale - loop) / (stale - oracle): 0 when the final champion is no better than the
model that never retrained, 1 when it matches the oracle, a HistGradientBoosting refitted on the
drifted labelled rows the loop had seen (or on those plus the reference, whichever predicts the
new traffic better). The benchmark, the demo and the recovery test all measure it this way.
"""

from __future__ import annotations

import math

import pandas as pd

from loopml.comparison import Scorer, score_rows
from loopml.config import ProjectConfig
from loopml.features import prepare_features, prepare_target
from loopml.metrics import metric_direction
from loopml.modeling import build_pipeline


def error(value: float, metric: str) -> float:
    """A metric as an error (lower is better): error metrics as they are, scores as 1 - score."""
    return value if metric_direction(metric) == "minimize" else 1.0 - value


def recovery(stale: float, loop: float, oracle: float) -> float:
    """Share of the stale-to-oracle gap the loop closed (NaN when there was no gap)."""
    gap = stale - oracle
    return (stale - loop) / gap if gap > 1e-12 else math.nan


def scorer_error(scorer: Scorer, fresh: pd.DataFrame, config: ProjectConfig) -> float:
    """A model's error on fresh labelled rows, in the gate metric."""
    return error(score_rows(scorer, fresh, config, config.gate_metric), config.gate_metric)


def oracle_error(
    config: ProjectConfig,
    drifted: pd.DataFrame,
    reference: pd.DataFrame,
    fresh: pd.DataFrame,
) -> float:
    """The oracle's error on ``fresh``: HistGradientBoosting (default settings) fitted on the
    drifted labelled rows, or on those plus ``reference``, whichever errs less."""
    errors = []
    for rows in (drifted, pd.concat([reference, drifted], ignore_index=True)):
        model = build_pipeline(
            "hist_gradient_boosting",
            numeric_columns=config.columns.numeric,
            categorical_columns=config.columns.categorical,
            datetime_columns=config.columns.datetime,
            task=config.task,
            random_state=config.split.random_state,
        ).fit(prepare_features(rows, config), prepare_target(rows, config))
        errors.append(scorer_error(Scorer(model), fresh, config))
    return min(errors)
