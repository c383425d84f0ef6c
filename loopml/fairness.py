"""The fairness audit of a version (fairlearn's MetricFrame) and the optional fairness gate.

For each sensitive column the audit compares the model's behaviour across its groups on the
held-out rows: selection rate, true and false positive rates, accuracy and the demographic-parity
and equalised-odds differences for a binary model; accuracy for a multiclass model; mean absolute
error and mean prediction for regression. Numeric columns with many values (an age) are cut into
quartile bands first, so each group has rows enough to measure.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from loopml.config import FairnessGateConfig, ProjectConfig
from loopml.errors import DataError
from loopml.label_rule import is_label

# Column-name words that usually name a protected attribute; ``init`` proposes such columns.
SENSITIVE_WORDS = frozenset(
    {
        "gender",
        "sex",
        "female",
        "male",
        "age",
        "race",
        "ethnicity",
        "ethnic",
        "religion",
        "religious",
        "marital",
        "senior",
        "nationality",
        "disability",
        "disabled",
        "pregnant",
        "pregnancy",
    }
)
MAX_GROUPS = 10  # a numeric column with more distinct values is audited by quartile band
BANDS = 4


def propose_sensitive_columns(columns: Iterable[str], target: str) -> list[str]:
    """Columns whose name has a word that usually names a protected attribute.

    Words are split on anything but letters (``senior_citizen``, ``AgeBand``), so ``usage`` or
    ``page_views`` are not taken for an age.
    """
    proposed = []
    for column in columns:
        if column == target:
            continue
        spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(column))
        words = {word.lower() for word in re.split(r"[^A-Za-z]+", spaced) if word}
        if words & SENSITIVE_WORDS:
            proposed.append(str(column))
    return proposed


def sensitive_groups(values: pd.Series) -> pd.Series:
    """Group labels of one sensitive column: its values, or quartile bands of a numeric one."""
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > MAX_GROUPS:
        banded = pd.qcut(values, BANDS, duplicates="drop")
        return banded.astype(str).where(values.notna(), "(missing)")
    return values.astype(str).where(values.notna(), "(missing)")


def audit_fairness(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    config: ProjectConfig,
) -> dict[str, Any]:
    """Per-group metrics and between-group gaps for each of ``config.sensitive_columns``.

    Args:
        frame: the rows (with the sensitive columns) the predictions were made on.
        y_true: the true labels or values, in ``frame``'s row order.
        y_pred: the model's predicted labels (thresholded) or values.
        config: the project's config (task, positive label, sensitive columns).

    Returns:
        ``{"columns": {COL: {"groups": [{group, count, metric...}], "differences": {...}}}}``;
        empty ``columns`` when the config names no sensitive column.

    Raises:
        DataError: a sensitive column is missing from ``frame``.
    """
    from fairlearn.metrics import MetricFrame, count

    absent = [column for column in config.sensitive_columns if column not in frame.columns]
    if absent:
        raise DataError(
            f"sensitive column(s) {', '.join(map(repr, absent))} are not in the data: "
            "fix sensitive_columns in the config"
        )
    metrics, prepared_true, prepared_pred = _fairness_inputs(y_true, y_pred, config)
    result: dict[str, Any] = {"task": _kind(config), "rows": int(len(frame)), "columns": {}}
    for column in config.sensitive_columns:
        groups = sensitive_groups(frame[column].reset_index(drop=True))
        metric_frame = MetricFrame(
            metrics={"count": count, **metrics},
            y_true=prepared_true,
            y_pred=prepared_pred,
            sensitive_features=groups.rename(column),
        )
        by_group = metric_frame.by_group.reset_index()
        rows = [
            {
                "group": str(row[column]),
                "count": int(row["count"]),
                **{name: _number(row[name]) for name in metrics},
            }
            for _, row in by_group.iterrows()
        ]
        result["columns"][column] = {
            "groups": rows,
            "differences": _differences(metric_frame, prepared_true, prepared_pred, groups, config),
        }
    return result


def _kind(config: ProjectConfig) -> str:
    if config.task == "regression":
        return "regression"
    return "binary" if config.is_binary else "multiclass"


def _fairness_inputs(
    y_true: np.ndarray, y_pred: np.ndarray, config: ProjectConfig
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, mean_absolute_error

    kind = _kind(config)
    if kind == "regression":
        truth = np.asarray(y_true, dtype=float)
        predicted = np.asarray(y_pred, dtype=float)
        return (
            {
                "mae": mean_absolute_error,
                "mean_prediction": lambda _, prediction: float(np.mean(prediction)),
                "mean_target": lambda truth_, _: float(np.mean(truth_)),
            },
            truth,
            predicted,
        )
    if kind == "multiclass":
        truth = np.asarray(y_true).astype(str)
        return {"accuracy": accuracy_score}, truth, np.asarray(y_pred).astype(str)
    truth = is_label(np.asarray(y_true), config.positive_label).astype(int)
    predicted = is_label(np.asarray(y_pred), config.positive_label).astype(int)
    return (
        {
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
            "accuracy": accuracy_score,
        },
        truth,
        predicted,
    )


def _differences(
    metric_frame: Any,
    truth: np.ndarray,
    predicted: np.ndarray,
    groups: pd.Series,
    config: ProjectConfig,
) -> dict[str, float | None]:
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    gaps = {name: _number(value) for name, value in metric_frame.difference().items()}
    gaps.pop("count", None)
    kind = _kind(config)
    if kind == "binary":
        return {
            "demographic_parity_difference": _number(
                demographic_parity_difference(truth, predicted, sensitive_features=groups)
            ),
            "equalized_odds_difference": _number(
                equalized_odds_difference(truth, predicted, sensitive_features=groups)
            ),
            "accuracy_difference": gaps.get("accuracy"),
        }
    if kind == "multiclass":
        return {"accuracy_difference": gaps.get("accuracy")}
    return {"mae_difference": gaps.get("mae")}


def _number(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


def largest_gap(audit: dict[str, Any], metric: str) -> tuple[str | None, float | None]:
    """The sensitive column with the largest ``metric`` gap in an audit, and that gap."""
    worst_column, worst = None, None
    for column, entry in audit.get("columns", {}).items():
        value = entry["differences"].get(metric)
        if value is not None and (worst is None or value > worst):
            worst_column, worst = column, value
    return worst_column, worst


def check_fairness(
    candidate_audit: dict[str, Any],
    champion_audit: dict[str, Any] | None,
    rule: FairnessGateConfig,
) -> dict[str, Any]:
    """Whether the candidate's gap stays within ``rule.max_increase`` of the champion's.

    Both audits must come from the same held-out rows. Without a champion (or a champion
    without an audit) there is nothing to compare and the check passes. Each column is compared
    with itself; the verdict follows the column whose gap grew most.

    Returns:
        ``{"passed", "metric", "column", "candidate", "champion", "increase", "max_increase",
        "reason"}``.
    """
    base = {"metric": rule.metric, "max_increase": rule.max_increase}
    if not champion_audit or not champion_audit.get("columns"):
        _, gap = largest_gap(candidate_audit, rule.metric)
        return {
            **base,
            "passed": True,
            "column": None,
            "candidate": gap,
            "champion": None,
            "increase": None,
            "reason": f"no champion audit to compare {rule.metric} with",
        }
    worst: dict[str, Any] | None = None
    for column, entry in candidate_audit["columns"].items():
        champion_entry = champion_audit["columns"].get(column)
        candidate_gap = entry["differences"].get(rule.metric)
        if champion_entry is None or candidate_gap is None:
            continue
        champion_gap = champion_entry["differences"].get(rule.metric) or 0.0
        increase = candidate_gap - champion_gap
        if worst is None or increase > worst["increase"]:
            worst = {
                "column": column,
                "candidate": candidate_gap,
                "champion": champion_gap,
                "increase": increase,
            }
    if worst is None:
        return {
            **base,
            "passed": True,
            "column": None,
            "candidate": None,
            "champion": None,
            "increase": None,
            "reason": f"{rule.metric} is undefined on the held-out groups",
        }
    passed = worst["increase"] <= rule.max_increase
    verb = "stays within" if passed else "exceeds"
    reason = (
        f"{rule.metric} on {worst['column']!r} grows from {worst['champion']:.4f} to "
        f"{worst['candidate']:.4f}, which {verb} the allowed increase of {rule.max_increase:g}"
    )
    return {**base, **worst, "passed": passed, "reason": reason}


def with_fairness_gate(decision: Any, check: dict[str, Any] | None) -> Any:
    """The gate's decision with the fairness check folded in (refused when the check fails).

    ``decision`` is the promotion gate's dataclass (``promote``, ``reason``, ``comparisons``);
    the check is added to its comparisons so the ledger records it.
    """
    if check is None:
        return decision
    comparisons = {**decision.comparisons, "fairness": check}
    if check["passed"] or not decision.promote:
        return dataclasses.replace(decision, comparisons=comparisons)
    return dataclasses.replace(
        decision,
        promote=False,
        reason=f"fairness gate refused the candidate: {check['reason']}",
        comparisons=comparisons,
    )
