"""Error analysis by slice: where on the held-out rows (or a labelled batch) the model errs most.

A slice is one value of a categorical column (or of a numeric column with few values, such as a
0/1 flag) or one quartile band of a numeric column. For each slice: its rows, the metric and an
interval (Wilson for accuracy, a bootstrap percentile interval for an error in the target's
units). Slices whose interval lies wholly on the bad side of the whole set's value are "worse
with confidence" and come first, worst first; slices with fewer than ``min_rows`` rows are shown
but not ranked (their metric says little).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loopml import metrics
from loopml.config import ProjectConfig
from loopml.monitoring import batch_outcomes

MIN_SLICE_ROWS = 30
MAX_VALUES = 10  # a numeric column with more distinct values is cut into bands
BANDS = 4
BOOTSTRAP_RESAMPLES = 300
CONFIDENCE = 0.95


def slice_metric(config: ProjectConfig) -> str:
    """The per-slice metric: accuracy for classification, mean absolute error for regression.

    Both are averages over rows, so a slice's value and interval mean the same on 30 rows as on
    3,000 (ROC AUC is not defined on a slice holding a single class).
    """
    return "mae" if config.task == "regression" else "accuracy"


def slice_masks(
    frame: pd.DataFrame, columns: list[str], numeric: set[str]
) -> list[tuple[str, str, np.ndarray]]:
    """``(column, slice label, row mask)`` for each slice of each column present in ``frame``."""
    slices = []
    for column in columns:
        if column not in frame.columns:
            continue
        values = frame[column].reset_index(drop=True)
        if column in numeric:
            values = pd.to_numeric(values, errors="coerce")
            if values.nunique() > MAX_VALUES:
                values = pd.qcut(values, BANDS, duplicates="drop").astype(str).where(values.notna())
        labels = values.astype(str).where(values.notna(), "(missing)")
        for label in pd.unique(labels):
            slices.append((column, str(label), np.asarray(labels == label)))
    return slices


def analyse_slices(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    config: ProjectConfig,
    *,
    min_rows: int = MIN_SLICE_ROWS,
    random_state: int = 0,
) -> dict[str, Any]:
    """The metric on every slice of the feature (and sensitive) columns, worst first.

    Args:
        frame: the rows, with their feature columns, in the order of ``y_true``/``y_pred``.
        y_true: true labels or values.
        y_pred: predicted labels (thresholded) or values.
        config: the project's config.
        min_rows: slices with fewer rows are listed last, unranked.
        random_state: seed of the bootstrap.

    Returns:
        ``{"metric", "direction", "overall", "rows", "slices": [...]}``; each slice has
        ``column``, ``slice``, ``rows``, ``value``, ``low``, ``high``, ``gap`` (worse side
        positive), ``worse_with_confidence`` and ``ranked``.
    """
    metric = slice_metric(config)
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    outcomes = batch_outcomes(config, truth, predicted)

    def function(positions: np.ndarray) -> float:
        return metrics.compute([metric], outcomes.take(positions))[metric]

    everything = np.arange(len(truth))
    overall = function(everything)
    lower_is_worse = metric != "mae"
    columns = list(dict.fromkeys([*config.columns.features, *config.sensitive_columns]))
    generator = np.random.default_rng(random_state)
    rows = []
    for column, label, mask in slice_masks(frame, columns, set(config.columns.numeric)):
        positions = everything[mask]
        value = function(positions)
        low, high = _interval(metric, function, positions, value, generator)
        gap = (overall - value) if lower_is_worse else (value - overall)
        worse = bool(high < overall) if lower_is_worse else bool(low > overall)
        ranked = len(positions) >= min_rows
        rows.append(
            {
                "column": column,
                "slice": label,
                "rows": int(len(positions)),
                "value": float(value),
                "low": float(low),
                "high": float(high),
                "gap": float(gap),
                "worse_with_confidence": worse and ranked,
                "ranked": ranked,
            }
        )
    rows.sort(key=lambda row: (not row["ranked"], not row["worse_with_confidence"], -row["gap"]))
    return {
        "metric": metric,
        "direction": "maximize" if lower_is_worse else "minimize",
        "overall": float(overall),
        "rows": int(len(truth)),
        "min_rows": min_rows,
        "slices": rows,
    }


def _interval(
    metric: str,
    function: Any,
    positions: np.ndarray,
    value: float,
    generator: np.random.Generator,
) -> tuple[float, float]:
    if metric == "accuracy":
        from scipy.stats import binomtest

        hits = int(round(value * len(positions)))
        interval = binomtest(hits, len(positions)).proportion_ci(CONFIDENCE, method="wilson")
        return float(interval.low), float(interval.high)
    if len(positions) < 2:
        return value, value
    draws = [
        function(positions[generator.integers(0, len(positions), len(positions))])
        for _ in range(BOOTSTRAP_RESAMPLES)
    ]
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def worst_slices(analysis: dict[str, Any], top: int = 10) -> list[dict[str, Any]]:
    """The first ``top`` ranked slices (those worse with confidence lead)."""
    return [row for row in analysis["slices"] if row["ranked"]][:top]


def slices_markdown(analysis: dict[str, Any], top: int = 10) -> str:
    """A markdown table of the worst slices (for the Prefect artifact and the console)."""
    lines = [
        f"Metric `{analysis['metric']}` on {analysis['rows']} rows: overall "
        f"{analysis['overall']:.4f}. Slices worse with 95% confidence come first; slices "
        f"under {analysis['min_rows']} rows are listed in the JSON, unranked.",
        "",
        "| column | slice | rows | value | 95% interval | worse with confidence |",
        "|---|---|---|---|---|---|",
    ]
    for row in worst_slices(analysis, top):
        lines.append(
            f"| {row['column']} | {_escape(row['slice'])} | {row['rows']} | {row['value']:.4f} "
            f"| {row['low']:.4f}–{row['high']:.4f} "
            f"| {'yes' if row['worse_with_confidence'] else ''} |"
        )
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
