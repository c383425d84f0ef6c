"""Per-column drift and the batch's verdict under a :class:`~loopml.config.DriftPolicy`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.spatial import distance

from loopml.config import ColumnKind, DriftPolicy
from loopml.drift.batch import (
    BatchSummary,
    CategoricalSummary,
    NumericSummary,
    as_summary,
    reference_cells,
)
from loopml.drift.profile import CategoricalProfile, NumericProfile, ReferenceProfile
from loopml.drift.statistics import (
    CdfView,
    adjust_p_values,
    category_vectors,
    chi_square_p_value,
    ks_p_value,
    population_stability_index,
)

VerdictStatus = Literal["drift", "no_drift", "insufficient_data"]


@dataclass
class ColumnDrift:
    """One column's drift check.

    Attributes:
        column: Column name.
        kind: "numeric" or "categorical".
        method: Effect size and test, e.g. "wasserstein+ks" (or Evidently's test name).
        score: The effect size (NaN without a verdict).
        p_value: The test's p-value; in :func:`detect_drift` corrected over the batch's columns
            (``DriftPolicy.multiple_testing``), the raw one is in ``note``. NaN without a verdict
            or for a method without a test.
        threshold: The effect-size threshold the score was compared with.
        drifted: Whether the column counts as drifted.
        note: Why, in words (sizes, null rates, unseen categories, missing verdicts).
    """

    column: str
    kind: ColumnKind
    method: str
    score: float
    p_value: float
    threshold: float
    drifted: bool
    note: str = ""
    raw_p_value: float = float("nan")  # before the correction: the stream detector's input
    unseen_share: float = 0.0  # categorical: share of non-null rows in unseen categories

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "score": _json_float(self.score),
            "p_value": _json_float(self.p_value),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "note": self.note,
            "raw_p_value": _json_float(self.raw_p_value),
            "unseen_share": self.unseen_share,
        }


@dataclass
class DriftVerdict:
    """The drift verdict for one batch.

    Attributes:
        status: "drift", "no_drift" or "insufficient_data" (too few rows for any verdict).
        drift_detected: True only when ``status == "drift"``.
        drift_share: Share of checked columns that drifted.
        weighted_drift_share: Importance-weighted share (None without importances).
        n_rows: Rows in the batch.
        columns: Per-column results, in profile order.
        drifted_columns: Drifted column names, largest effect (relative to threshold) first.
        unseen_columns: Categorical columns whose rows are mostly (``DriftPolicy.unseen_share``)
            in categories the reference never had: each drifts the batch on its own.
    """

    status: VerdictStatus
    drift_detected: bool
    drift_share: float
    weighted_drift_share: float | None
    n_rows: int
    columns: dict[str, ColumnDrift]
    drifted_columns: list[str]
    unseen_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN becomes None)."""
        return {
            "status": self.status,
            "drift_detected": self.drift_detected,
            "drift_share": self.drift_share,
            "weighted_drift_share": self.weighted_drift_share,
            "n_rows": self.n_rows,
            "drifted_columns": list(self.drifted_columns),
            "unseen_columns": list(self.unseen_columns),
            "columns": {name: column.to_dict() for name, column in self.columns.items()},
        }


def detect_drift(
    profile: ReferenceProfile,
    current: pd.DataFrame | Iterable[pd.DataFrame] | BatchSummary,
    policy: DriftPolicy | None = None,
    *,
    importances: Mapping[str, float] | None = None,
) -> DriftVerdict:
    """Compare a batch with the reference profile under ``policy``.

    Args:
        profile: The reference profile (see :func:`~loopml.drift.profile.build_reference_profile`).
        current: The batch: a DataFrame, an iterable of DataFrame chunks (read once, memory flat)
            or a :class:`~loopml.drift.batch.BatchSummary` already accumulated.
        policy: Methods and thresholds; defaults to ``DriftPolicy()``.
        importances: Optional feature importances (non-negative, any scale) for the weighted
            share; columns without one weigh 0.

    Raises:
        DataError: a profiled column is missing from the batch.
    """
    policy = policy or DriftPolicy()
    summary = as_summary(profile, current)
    results: dict[str, ColumnDrift] = {}
    raw_p_values: dict[str, float] = {}
    for name, column_profile in profile.numeric.items():
        column_summary = summary.numeric[name]
        result, p_value = _null_rate_drift(
            name, "numeric", column_profile, column_summary, policy
        ) or _numeric_drift(name, column_profile, column_summary, policy)
        results[name] = result
        if p_value is not None:
            raw_p_values[name] = p_value
    for name, column_profile in profile.categorical.items():
        column_summary = summary.categorical[name]
        result, p_value = _null_rate_drift(
            name, "categorical", column_profile, column_summary, policy
        ) or _categorical_drift(name, column_profile, column_summary, policy)
        results[name] = result
        if p_value is not None:
            raw_p_values[name] = p_value

    if raw_p_values:
        adjusted = adjust_p_values(np.array(list(raw_p_values.values())), policy.multiple_testing)
        for name, p_value in zip(raw_p_values, adjusted, strict=True):
            column = results[name]
            column.p_value = float(p_value)
            column.raw_p_value = float(raw_p_values[name])
            column.drifted = bool(column.score >= column.threshold and p_value < policy.alpha)
            column.note = f"raw p={raw_p_values[name]:.3g}; {column.note}".rstrip("; ")

    checked = [name for name in results if name in raw_p_values]
    if summary.n_rows < policy.min_rows or not checked:
        return DriftVerdict(
            status="insufficient_data",
            drift_detected=False,
            drift_share=0.0,
            weighted_drift_share=None,
            n_rows=summary.n_rows,
            columns=results,
            drifted_columns=[],
        )
    drifted = [name for name in checked if results[name].drifted]
    drift_share = len(drifted) / len(checked)
    weighted_share = _weighted_share(checked, drifted, importances)
    # One column the model no longer recognises (every value a new category) is a broken input,
    # not a small drift share: it decides the batch by itself.
    unseen = [
        name
        for name in drifted
        if results[name].kind == "categorical" and results[name].unseen_share >= policy.unseen_share
    ]
    drift_detected = (
        drift_share >= policy.drift_share
        or (weighted_share is not None and weighted_share >= policy.weighted_drift_share)
        or bool(unseen)
    )
    drifted.sort(key=lambda name: results[name].score / results[name].threshold, reverse=True)
    return DriftVerdict(
        status="drift" if drift_detected else "no_drift",
        drift_detected=drift_detected,
        drift_share=drift_share,
        weighted_drift_share=weighted_share,
        n_rows=summary.n_rows,
        columns=results,
        drifted_columns=drifted,
        unseen_columns=unseen,
    )


def _null_rate_drift(
    name: str,
    kind: ColumnKind,
    profile: NumericProfile | CategoricalProfile,
    summary: NumericSummary | CategoricalSummary,
    policy: DriftPolicy,
) -> tuple[ColumnDrift, float] | None:
    """The column's missing share against the reference's, when it moved by at least
    ``policy.null_rate_change``: then that is the column's verdict (a column whose values all
    went missing has no values left to compare, and is the plainest drift there is)."""
    total = summary.n + summary.n_null
    change = abs(summary.n_null / total - profile.null_rate) if total else 0.0
    if total < policy.min_rows or change < policy.null_rate_change:
        return None
    p_value = chi_square_p_value(
        np.array([profile.n, profile.n_null]), np.array([summary.n, summary.n_null])
    )
    note = f"missing values: {_null_note(profile.null_rate, summary.n_null, total)}"
    method = "null-rate+chisquare"
    column = ColumnDrift(name, kind, method, change, p_value, policy.null_rate_change, False, note)
    return column, p_value


def _numeric_drift(
    name: str, profile: NumericProfile, summary: NumericSummary, policy: DriftPolicy
) -> tuple[ColumnDrift, float | None]:
    threshold = policy.effect_threshold(name, "numeric")
    discrete = profile.exact and profile.edges.size <= policy.discrete_max_values
    test = "chisquare" if discrete else "ks"
    method = f"{policy.numeric_method}+{test}"
    nulls = _null_note(profile.null_rate, summary.n_null, summary.n + summary.n_null)
    if summary.n < policy.min_rows or profile.n == 0:
        note = f"insufficient data: {summary.n} non-null values (min_rows {policy.min_rows})"
        return _no_verdict(name, "numeric", method, threshold, f"{note}; {nulls}"), None
    view = CdfView(profile.edges, reference_cells(profile), summary.cells, profile.n, summary.n)
    if policy.numeric_method == "wasserstein":
        score = view.wasserstein() / max(profile.std, 1e-3)
    else:
        score = view.psi(policy.psi_bins)
    if discrete:
        reference_counts = np.append(profile.edge_counts, profile.gap_counts.sum())
        current_counts = np.append(summary.cells.edge_counts, summary.cells.gap_counts.sum())
        p_value = chi_square_p_value(reference_counts, current_counts)
    else:
        p_value = ks_p_value(view)
    mean = summary.total / summary.n
    shift = (mean - profile.mean) / max(profile.std, 1e-12)
    note = f"mean {mean:.4g} vs {profile.mean:.4g} ({shift:+.2f} sd); {nulls}"
    return ColumnDrift(
        name, "numeric", method, float(score), p_value, threshold, False, note
    ), p_value


def _categorical_drift(
    name: str, profile: CategoricalProfile, summary: CategoricalSummary, policy: DriftPolicy
) -> tuple[ColumnDrift, float | None]:
    threshold = policy.effect_threshold(name, "categorical")
    method = f"{policy.categorical_method}+chisquare"
    nulls = _null_note(profile.null_rate, summary.n_null, summary.n + summary.n_null)
    if summary.n < policy.min_rows or profile.n == 0:
        note = f"insufficient data: {summary.n} non-null values (min_rows {policy.min_rows})"
        return _no_verdict(name, "categorical", method, threshold, f"{note}; {nulls}"), None
    keys, reference_counts, current_counts = category_vectors(profile.counts, summary.counts)
    reference_share = reference_counts / profile.n
    current_share = current_counts / summary.n
    if policy.categorical_method == "jensenshannon":
        score = float(distance.jensenshannon(reference_share, current_share))
    else:
        score = population_stability_index(reference_share, current_share)
    p_value = chi_square_p_value(reference_counts, current_counts)
    unseen = [key for key in keys if key not in profile.counts]
    unseen_rows = int(sum(summary.counts[key] for key in unseen))
    note = nulls
    if unseen:
        shown = ", ".join(repr(key) for key in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
        note = f"{len(unseen)} unseen categories in {unseen_rows} rows ({shown}); {nulls}"
    column = ColumnDrift(name, "categorical", method, score, p_value, threshold, False, note)
    column.unseen_share = unseen_rows / summary.n
    return column, p_value


def _no_verdict(
    name: str, kind: ColumnKind, method: str, threshold: float, note: str
) -> ColumnDrift:
    return ColumnDrift(name, kind, method, math.nan, math.nan, threshold, False, note)


def _null_note(reference_rate: float, current_nulls: int, current_total: int) -> str:
    current_rate = current_nulls / current_total if current_total else 0.0
    return f"null rate {current_rate:.1%} vs {reference_rate:.1%}"


def _weighted_share(
    checked: list[str], drifted: list[str], importances: Mapping[str, float] | None
) -> float | None:
    if importances is None:
        return None
    negative = {k: v for k, v in importances.items() if v < 0}
    if negative:
        raise ValueError(f"importances must be non-negative: {negative}")
    total = sum(float(importances.get(name, 0.0)) for name in checked)
    if total <= 0:
        return None
    return sum(float(importances.get(name, 0.0)) for name in drifted) / total


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
