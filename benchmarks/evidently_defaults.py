"""Evidently 0.7.23's default per-column drift tests, computed from loopml's drift histograms.

Only the tests (tests/unit/test_drift.py) and benchmarks/drift_benchmark.py use this: it checks
that loopml's histograms carry what ``DataDriftPreset()`` needs, and times a memory-flat
equivalent of it on big batches. loopml's own verdict is :func:`loopml.drift.verdict.detect_drift`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from loopml.config import ColumnKind
from loopml.drift.batch import BatchSummary, NumericSummary, as_summary, reference_cells
from loopml.drift.profile import NumericProfile, ReferenceProfile
from loopml.drift.statistics import CdfView, category_vectors, ks_p_value
from loopml.drift.verdict import ColumnDrift

# Evidently 0.7.23 switches from statistical tests to distances above this many reference rows.
EVIDENTLY_SMALL_REFERENCE_ROWS = 1_000


def evidently_default_columns(
    profile: ReferenceProfile, current: pd.DataFrame | Iterable[pd.DataFrame] | BatchSummary
) -> dict[str, ColumnDrift]:
    """Evidently 0.7.23's default per-column drift tests, computed from the profile's histograms.

    Mirrors ``evidently.legacy.calculations.stattests.registry._get_default_stattest`` on
    non-null finite values: with at most 1,000 reference values, numeric columns with more than 5
    distinct values (reference and current together) get KS (drift when p <= 0.05), other columns
    chi-square (p < 0.05), or a two-proportion Z-test (p < 0.05) when there are at most 2 distinct
    values; above 1,000 reference values, numeric columns with more than 5 distinct values get
    the Wasserstein distance normalised by the reference std (drift when >= 0.1), others the
    Jensen-Shannon distance (>= 0.1). Results are exact when the numeric reference was stored
    exactly (at most ``bins`` distinct values, always the case below 1,000 rows); with quantile
    bins the Wasserstein distance is exact unless both CDFs cross inside one bin.

    Columns Evidently cannot test (no non-null values on one side) are left out.
    """
    summary = as_summary(profile, current)
    results: dict[str, ColumnDrift] = {}
    for name, column_profile in profile.numeric.items():
        column_summary = summary.numeric[name]
        if column_profile.n == 0 or column_summary.n == 0:
            continue
        if column_profile.exact:
            n_values = column_profile.edges.size + len(column_summary.unseen_counts)
        else:
            n_values = column_profile.edges.size  # more than `bins` >= 10 distinct values
        view = CdfView(
            column_profile.edges,
            reference_cells(column_profile),
            column_summary.cells,
            column_profile.n,
            column_summary.n,
        )
        small_reference = column_profile.n <= EVIDENTLY_SMALL_REFERENCE_ROWS
        if n_values > 5:
            if small_reference:
                p_value = ks_p_value(view)
                results[name] = _evidently_result(name, "numeric", "ks", p_value, p_value <= 0.05)
            else:
                score = view.wasserstein() / max(column_profile.std, 0.001)
                results[name] = _evidently_result(
                    name, "numeric", "wasserstein", score, score >= 0.1
                )
            continue
        reference_counts, current_counts = _numeric_value_counts(column_profile, column_summary)
        results[name] = _evidently_discrete(
            name, "numeric", reference_counts, current_counts, small_reference
        )
    for name, column_profile in profile.categorical.items():
        column_summary = summary.categorical[name]
        if column_profile.n == 0 or column_summary.n == 0:
            continue
        small_reference = column_profile.n <= EVIDENTLY_SMALL_REFERENCE_ROWS
        results[name] = _evidently_discrete(
            name, "categorical", column_profile.counts, column_summary.counts, small_reference
        )
    return results


def evidently_default_verdicts(
    profile: ReferenceProfile, current: pd.DataFrame | Iterable[pd.DataFrame] | BatchSummary
) -> dict[str, bool]:
    """Per-column drift verdicts of Evidently 0.7.23's ``DataDriftPreset()`` defaults, fast.

    See :func:`evidently_default_columns` for the rules. Evidently's dataset verdict is then
    ``sum(verdicts.values()) / len(verdicts) >= 0.5``.
    """
    return {
        name: result.drifted for name, result in evidently_default_columns(profile, current).items()
    }


def _numeric_value_counts(
    profile: NumericProfile, summary: NumericSummary
) -> tuple[dict[Any, int], dict[Any, int]]:
    """Value counts of a numeric column with at most 5 distinct values (so stored exactly)."""
    edges = profile.edges.tolist()
    reference_counts = dict(zip(edges, profile.edge_counts.tolist(), strict=True))
    current_counts = dict(zip(edges, summary.cells.edge_counts.tolist(), strict=True))
    current_counts = {value: count for value, count in current_counts.items() if count}
    current_counts.update(summary.unseen_counts)
    return reference_counts, current_counts


def _evidently_discrete(
    name: str,
    kind: ColumnKind,
    reference: Mapping[Any, int],
    current: Mapping[Any, int],
    small_reference: bool,
) -> ColumnDrift:
    keys, reference_counts, current_counts = category_vectors(reference, current)
    keys_present = [
        k for k, r, c in zip(keys, reference_counts, current_counts, strict=True) if r or c
    ]
    n_reference, n_current = reference_counts.sum(), current_counts.sum()
    if not small_reference:
        score = float(
            distance.jensenshannon(reference_counts / n_reference, current_counts / n_current)
        )
        return _evidently_result(name, kind, "jensenshannon", score, score >= 0.1)
    if len(keys_present) > 2:
        expected = reference_counts * (n_current / n_reference)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_value = float(stats.chisquare(current_counts, expected).pvalue)
        return _evidently_result(name, kind, "chisquare", p_value, p_value < 0.05)
    p_value = _evidently_z_test(keys, reference_counts, current_counts)
    return _evidently_result(name, kind, "z", p_value, p_value < 0.05)


def _evidently_z_test(
    keys: list[Any], reference_counts: np.ndarray, current_counts: np.ndarray
) -> float:
    reference_present = [k for k, c in zip(keys, reference_counts, strict=True) if c]
    current_present = [k for k, c in zip(keys, current_counts, strict=True) if c]
    if len(reference_present) == 1 and current_present == reference_present:
        return 1.0
    present = [k for k in keys if k in reference_present or k in current_present]
    try:
        first_key = sorted(present)[0]
    except TypeError:
        first_key = sorted(present, key=str)[0]
    index = keys.index(first_key)
    n_reference, n_current = reference_counts.sum(), current_counts.sum()
    # Evidently tests the share of values other than the smallest key.
    share_reference = 1.0 - reference_counts[index] / n_reference
    share_current = 1.0 - current_counts[index] / n_current
    pooled = (share_reference * n_reference + share_current * n_current) / (n_reference + n_current)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (share_reference - share_current) / np.sqrt(
            pooled * (1 - pooled) * (1.0 / n_reference + 1.0 / n_current)
        )
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def _evidently_result(
    name: str, kind: ColumnKind, method: str, score: float, drifted: bool
) -> ColumnDrift:
    threshold = 0.1 if method in ("wasserstein", "jensenshannon") else 0.05
    p_value = score if method in ("ks", "chisquare", "z") else math.nan
    return ColumnDrift(name, kind, method, float(score), p_value, threshold, bool(drifted))
