"""Data drift against a stored reference profile: trustworthy on small batches, flat on big ones.

The reference (training) data is summarised once, when a model version is registered, into a
:class:`ReferenceProfile` (quantile bin edges with counts for numeric columns, category counts for
categorical ones). A batch is then compared with the profile by :func:`detect_drift`, reading the
batch whole or chunk by chunk: each chunk only adds to per-column histograms on the reference's
bin edges, so a 10M-row batch costs what its histograms cost.

A column drifts under :class:`DriftPolicy` only when BOTH its effect size (normalised Wasserstein
distance or PSI for numeric columns, Jensen-Shannon distance or PSI for categorical ones) reaches
its threshold AND its significance test (Kolmogorov-Smirnov, or chi-square for categorical and
low-cardinality numeric columns), corrected for testing many columns at once (Benjamini-Hochberg
or Holm), is below ``alpha``. The effect threshold keeps huge batches from flagging negligible
differences; the test keeps small batches from flagging sampling noise. See docs/monitoring.md.

benchmarks/evidently_defaults.py re-implements Evidently 0.7.23's default per-column tests on the
same histograms (a fast, memory-flat equivalent of ``DataDriftPreset()`` that the tests and the
drift benchmark compare with Evidently).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from loopml.config import ColumnKind, DriftPolicy
from loopml.errors import DataError

PROFILE_FORMAT_VERSION = 1
# scipy.stats.ks_2samp computes exact p-values up to this sample size and Smirnov's asymptotic
# formula beyond it; we follow the same switch so our p-values match scipy's (and Evidently's).
KS_EXACT_MAX_ROWS = 10_000
# Chi-square needs expected counts of about 5 per cell; rarer categories are pooled into one cell.
CHI_SQUARE_MIN_EXPECTED = 5.0
PSI_FLOOR = 1e-4  # share substituted for empty bins, so PSI stays finite

VerdictStatus = Literal["drift", "no_drift", "insufficient_data"]


# --------------------------------------------------------------------------- reference profile


@dataclass
class NumericProfile:
    """One numeric column as sorted edges with the mass on and between them.

    ``edges`` are distinct reference values (all of them when ``exact``, else quantiles including
    the minimum and maximum). ``edge_counts[k]`` counts values equal to ``edges[k]``;
    ``gap_counts[k]`` counts values strictly inside gap ``k`` (gap 0 lies below ``edges[0]``, gap
    ``m`` above ``edges[m-1]``, gap k between ``edges[k-1]`` and ``edges[k]``) and
    ``gap_offsets[k]`` sums their distances from the gap's finite edge (``edges[k-1]``, or
    ``edges[0]`` for gap 0). That is enough to integrate the empirical CDF exactly over each gap,
    hence Wasserstein distances, and to evaluate both CDFs on every edge, hence KS statistics.
    """

    edges: np.ndarray
    edge_counts: np.ndarray
    gap_counts: np.ndarray
    gap_offsets: np.ndarray
    n: int
    n_null: int
    mean: float
    std: float
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "edge_counts": self.edge_counts.tolist(),
            "gap_counts": self.gap_counts.tolist(),
            "gap_offsets": self.gap_offsets.tolist(),
            "n": self.n,
            "n_null": self.n_null,
            "mean": self.mean,
            "std": self.std,
            "exact": self.exact,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericProfile:
        return cls(
            edges=np.asarray(data["edges"], dtype=np.float64),
            edge_counts=np.asarray(data["edge_counts"], dtype=np.int64),
            gap_counts=np.asarray(data["gap_counts"], dtype=np.int64),
            gap_offsets=np.asarray(data["gap_offsets"], dtype=np.float64),
            n=int(data["n"]),
            n_null=int(data["n_null"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
            exact=bool(data["exact"]),
        )

    @property
    def null_rate(self) -> float:
        total = self.n + self.n_null
        return self.n_null / total if total else 0.0


@dataclass
class CategoricalProfile:
    """One categorical column as category counts (missing values counted apart)."""

    counts: dict[Any, int]
    n: int
    n_null: int

    def to_dict(self) -> dict[str, Any]:
        # A list of pairs, not a mapping: JSON keys would turn 1 and True into strings.
        return {
            "counts": [[k, v] for k, v in self.counts.items()],
            "n": self.n,
            "n_null": self.n_null,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalProfile:
        counts = {_native(key): int(count) for key, count in data["counts"]}
        return cls(counts=counts, n=int(data["n"]), n_null=int(data["n_null"]))

    @property
    def null_rate(self) -> float:
        total = self.n + self.n_null
        return self.n_null / total if total else 0.0


@dataclass
class ReferenceProfile:
    """Statistics of the reference data, computed once and stored with the model version."""

    numeric: dict[str, NumericProfile]
    categorical: dict[str, CategoricalProfile]
    n_rows: int
    bins: int

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` restores an equal profile."""
        return {
            "format_version": PROFILE_FORMAT_VERSION,
            "n_rows": self.n_rows,
            "bins": self.bins,
            "numeric": {name: column.to_dict() for name, column in self.numeric.items()},
            "categorical": {name: column.to_dict() for name, column in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        version = data.get("format_version")
        if version != PROFILE_FORMAT_VERSION:
            raise DataError(
                f"reference profile format {version!r} is not supported "
                f"(expected {PROFILE_FORMAT_VERSION}); rebuild it from the reference data"
            )
        return cls(
            numeric={k: NumericProfile.from_dict(v) for k, v in data["numeric"].items()},
            categorical={
                k: CategoricalProfile.from_dict(v) for k, v in data["categorical"].items()
            },
            n_rows=int(data["n_rows"]),
            bins=int(data["bins"]),
        )


def build_reference_profile(
    frame: pd.DataFrame,
    numeric_columns: Iterable[str],
    categorical_columns: Iterable[str],
    *,
    bins: int = 1000,
) -> ReferenceProfile:
    """Summarise the reference data for later drift checks.

    Args:
        frame: The reference (training) data.
        numeric_columns: Columns compared as numbers.
        categorical_columns: Columns compared as categories.
        bins: Quantile bins per numeric column. Columns with at most this many distinct values are
            stored exactly (every value with its count), which makes every statistic exact.

    Raises:
        DataError: a column is missing, or a numeric column holds non-numbers.
    """
    if bins < 10:
        raise ValueError("bins must be at least 10")
    numeric_columns, categorical_columns = list(numeric_columns), list(categorical_columns)
    _require_columns(frame, [*numeric_columns, *categorical_columns], "reference data")
    numeric = {name: _numeric_profile(name, frame[name], bins=bins) for name in numeric_columns}
    categorical = {}
    for name in categorical_columns:
        counts = _category_counts(frame[name])
        n = int(sum(counts.values()))
        categorical[name] = CategoricalProfile(counts=counts, n=n, n_null=int(len(frame) - n))
    return ReferenceProfile(numeric=numeric, categorical=categorical, n_rows=len(frame), bins=bins)


def _numeric_profile(name: str, series: pd.Series, *, bins: int) -> NumericProfile:
    values, n_null = _finite_values(name, series)
    if values.size == 0:
        return NumericProfile(
            edges=np.empty(0),
            edge_counts=np.zeros(0, dtype=np.int64),
            gap_counts=np.zeros(1, dtype=np.int64),
            gap_offsets=np.zeros(1),
            n=0,
            n_null=n_null,
            mean=math.nan,
            std=math.nan,
            exact=True,
        )
    # One sort gives the distinct values, the quantiles and every cell (the costly part on 1M rows).
    ordered = np.sort(values)
    starts_new_value = np.empty(ordered.size, dtype=bool)
    starts_new_value[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_new_value[1:])
    exact = int(starts_new_value.sum()) <= bins
    if exact:
        edges = ordered[starts_new_value]
    else:
        # Quantiles as inverted_cdf takes them: actual data values, the first being the minimum
        # and the last the maximum, so the reference puts no mass in the outer gaps.
        positions = np.ceil(np.linspace(0.0, 1.0, bins + 1) * ordered.size).astype(np.int64) - 1
        edges = np.unique(ordered[np.clip(positions, 0, ordered.size - 1)])
    left = np.searchsorted(ordered, edges, side="left")
    right = np.searchsorted(ordered, edges, side="right")
    gap_counts = np.append(left, ordered.size) - np.insert(right, 0, 0)
    edge_counts = right - left
    cell_counts = np.empty(2 * edges.size + 1, dtype=np.int64)
    cell_counts[0::2], cell_counts[1::2] = gap_counts, edge_counts
    cell_of_value = np.repeat(np.arange(cell_counts.size), cell_counts)
    # Gap k is anchored at edges[k-1] (gap 0 at edges[0]); values on edges add 0.
    anchors = np.repeat(edges, 2)
    anchors = np.concatenate([[edges[0]], anchors])
    anchors[1::2] = edges
    distances = np.abs(ordered - anchors[cell_of_value])
    cell_offsets = np.bincount(cell_of_value, weights=distances, minlength=cell_counts.size)
    return NumericProfile(
        edges=edges,
        edge_counts=edge_counts.astype(np.int64),
        gap_counts=gap_counts.astype(np.int64),
        gap_offsets=cell_offsets[0::2],
        n=int(values.size),
        n_null=n_null,
        mean=float(values.mean()),
        std=float(values.std()),
        exact=bool(exact),
    )


# --------------------------------------------------------------------------- batch accumulation


@dataclass
class _NumericCells:
    edge_counts: np.ndarray
    gap_counts: np.ndarray
    gap_offsets: np.ndarray

    @classmethod
    def empty(cls, n_edges: int) -> _NumericCells:
        return cls(
            edge_counts=np.zeros(n_edges, dtype=np.int64),
            gap_counts=np.zeros(n_edges + 1, dtype=np.int64),
            gap_offsets=np.zeros(n_edges + 1, dtype=np.float64),
        )

    def add(self, edges: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Count ``values`` into the cells; returns the values that fall between edges."""
        n_edges = edges.size
        if values.size == 0:
            return values
        if n_edges == 0:
            self.gap_counts[0] += values.size
            return values
        position = np.searchsorted(edges, values, side="left")
        on_edge = edges[np.minimum(position, n_edges - 1)] == values
        self.edge_counts += np.bincount(position[on_edge], minlength=n_edges)
        between = ~on_edge
        gap = position[between]
        off_edge_values = values[between]
        # Distance from the gap's finite edge: edges[k-1] for gaps 1..m, edges[0] for gap 0.
        anchor = edges[np.maximum(gap - 1, 0)]
        offsets = np.abs(off_edge_values - anchor)
        self.gap_counts += np.bincount(gap, minlength=n_edges + 1)
        self.gap_offsets += np.bincount(gap, weights=offsets, minlength=n_edges + 1)
        return off_edge_values


@dataclass
class _NumericSummary:
    cells: _NumericCells
    n: int = 0
    n_null: int = 0
    total: float = 0.0
    # Counts of values absent from an exact reference with <= 5 values (see _UNSEEN_VALUES_TRACKED).
    unseen_counts: dict[float, int] = field(default_factory=dict)


@dataclass
class _CategoricalSummary:
    counts: dict[Any, int] = field(default_factory=dict)
    n: int = 0
    n_null: int = 0


# Distinct values not in an exact reference are tracked up to this many: Evidently's default test
# depends on whether reference and current together hold <= 2 or <= 5 distinct values.
_UNSEEN_VALUES_TRACKED = 6


@dataclass
class BatchSummary:
    """A batch reduced to histograms on a profile's bins (what every drift statistic needs).

    Build it with :func:`summarize_batch` to read a big batch once and run both
    :func:`detect_drift` (and the benchmarks' Evidently equivalent) on it.
    """

    numeric: dict[str, _NumericSummary]
    categorical: dict[str, _CategoricalSummary]
    n_rows: int = 0


def summarize_batch(
    profile: ReferenceProfile, current: pd.DataFrame | Iterable[pd.DataFrame]
) -> BatchSummary:
    """Accumulate a batch (a DataFrame or an iterable of chunks) against ``profile``'s bins.

    Memory stays at one chunk plus the histograms, whatever the batch size.

    Raises:
        DataError: a profiled column is missing from the batch or not numeric where it should be.
    """
    summary = BatchSummary(
        numeric={
            name: _NumericSummary(cells=_NumericCells.empty(column.edges.size))
            for name, column in profile.numeric.items()
        },
        categorical={name: _CategoricalSummary() for name in profile.categorical},
    )
    chunks = [current] if isinstance(current, pd.DataFrame) else current
    for chunk in chunks:
        _require_columns(chunk, profile.columns, "current batch")
        summary.n_rows += len(chunk)
        for name, column_profile in profile.numeric.items():
            _add_numeric_chunk(summary.numeric[name], column_profile, name, chunk[name])
        for name, column_summary in summary.categorical.items():
            counts = _category_counts(chunk[name])
            for key, count in counts.items():
                column_summary.counts[key] = column_summary.counts.get(key, 0) + count
            n = int(sum(counts.values()))
            column_summary.n += n
            column_summary.n_null += len(chunk) - n
    return summary


def _add_numeric_chunk(
    summary: _NumericSummary, profile: NumericProfile, name: str, series: pd.Series
) -> None:
    values, n_null = _finite_values(name, series)
    summary.n += values.size
    summary.n_null += n_null
    summary.total += float(values.sum())
    off_edge_values = summary.cells.add(profile.edges, values)
    tracking = len(summary.unseen_counts) <= _UNSEEN_VALUES_TRACKED
    if profile.exact and profile.edges.size <= 5 and tracking and off_edge_values.size:
        distinct, counts = np.unique(off_edge_values, return_counts=True)
        # Beyond the cap the column has > 5 distinct values and the counts are not needed.
        kept = slice(0, _UNSEEN_VALUES_TRACKED + 1)
        for value, count in zip(distinct[kept].tolist(), counts[kept].tolist(), strict=True):
            summary.unseen_counts[value] = summary.unseen_counts.get(value, 0) + count


def _as_summary(
    profile: ReferenceProfile, current: pd.DataFrame | Iterable[pd.DataFrame] | BatchSummary
) -> BatchSummary:
    return current if isinstance(current, BatchSummary) else summarize_batch(profile, current)


# --------------------------------------------------------------------------- statistics


@dataclass
class _CdfView:
    """Both empirical CDFs on a numeric profile's edges (reference and current)."""

    edges: np.ndarray
    reference: _NumericCells
    current: _NumericCells
    n_reference: int
    n_current: int

    def _cdfs(self, cells: _NumericCells, n: int) -> tuple[np.ndarray, np.ndarray]:
        # below[k]: share strictly below edges[k]; at[k]: share at or below edges[k].
        below = np.cumsum(cells.gap_counts[:-1]) + np.cumsum(cells.edge_counts) - cells.edge_counts
        at = below + cells.edge_counts
        return below / n, at / n

    def ks_statistic(self) -> float:
        ref_below, ref_at = self._cdfs(self.reference, self.n_reference)
        cur_below, cur_at = self._cdfs(self.current, self.n_current)
        if self.edges.size == 0:
            return 0.0
        return float(max(np.abs(ref_below - cur_below).max(), np.abs(ref_at - cur_at).max()))

    def wasserstein(self) -> float:
        """First Wasserstein distance, exact unless the CDFs cross inside a gap."""
        if self.edges.size == 0:
            return 0.0
        ref, cur = self.reference, self.current
        n_ref, n_cur = self.n_reference, self.n_current
        widths = np.diff(self.edges)
        _, ref_at = self._cdfs(ref, n_ref)
        _, cur_at = self._cdfs(cur, n_cur)
        # Integral of a CDF over interior gap k (between edges k-1 and k): the CDF at the left
        # edge times the width, plus each value inside the gap adds its distance to the right edge.
        ref_integral = (
            ref_at[:-1] * widths + (ref.gap_counts[1:-1] * widths - ref.gap_offsets[1:-1]) / n_ref
        )
        cur_integral = (
            cur_at[:-1] * widths + (cur.gap_counts[1:-1] * widths - cur.gap_offsets[1:-1]) / n_cur
        )
        interior = float(np.abs(ref_integral - cur_integral).sum())
        # Outer gaps: only one side can have mass there (the reference's extremes are edges unless
        # the profile was built elsewhere); integrate each side's CDF gap separately.
        lower = abs(cur.gap_offsets[0] / n_cur - ref.gap_offsets[0] / n_ref)
        upper = abs(cur.gap_offsets[-1] / n_cur - ref.gap_offsets[-1] / n_ref)
        return interior + float(lower + upper)

    def pseudo_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Samples with the same counts on edges and in gaps (gap values at their gap's mean).

        With an exact reference the reference CDF is flat inside gaps, so these samples have
        exactly the KS statistic of the original data.
        """
        return self._pseudo(self.reference), self._pseudo(self.current)

    def _pseudo(self, cells: _NumericCells) -> np.ndarray:
        edges = self.edges
        anchors = np.concatenate([[edges[0]], edges])
        signs = np.concatenate([[-1.0], np.ones(edges.size)])
        with np.errstate(invalid="ignore", divide="ignore"):
            gap_means = anchors + signs * np.where(
                cells.gap_counts > 0, cells.gap_offsets / np.maximum(cells.gap_counts, 1), 0.0
            )
        return np.concatenate(
            [np.repeat(edges, cells.edge_counts), np.repeat(gap_means, cells.gap_counts)]
        )

    def psi(self, n_bins: int) -> float:
        """PSI on ``n_bins`` bins of equal reference mass, built from the fine cells."""
        ref_cells = _interleave(self.reference)
        cur_cells = _interleave(self.current)
        cumulative_before = np.concatenate([[0], np.cumsum(ref_cells)[:-1]]) / self.n_reference
        bin_index = np.minimum((cumulative_before * n_bins).astype(np.int64), n_bins - 1)
        ref_share = np.bincount(bin_index, weights=ref_cells, minlength=n_bins) / self.n_reference
        cur_share = np.bincount(bin_index, weights=cur_cells, minlength=n_bins) / self.n_current
        return _psi(ref_share, cur_share)


def _interleave(cells: _NumericCells) -> np.ndarray:
    """Cell counts in value order: gap 0, edge 0, gap 1, edge 1, ..., gap m."""
    ordered = np.empty(cells.gap_counts.size + cells.edge_counts.size, dtype=np.float64)
    ordered[0::2] = cells.gap_counts
    ordered[1::2] = cells.edge_counts
    return ordered


def _psi(reference_share: np.ndarray, current_share: np.ndarray) -> float:
    keep = (reference_share > 0) | (current_share > 0)
    reference_share = np.maximum(reference_share[keep], PSI_FLOOR)
    current_share = np.maximum(current_share[keep], PSI_FLOOR)
    return float(
        np.sum((current_share - reference_share) * np.log(current_share / reference_share))
    )


def _ks_p_value(view: _CdfView) -> float:
    """Two-sided KS p-value as scipy.stats.ks_2samp computes it (exact when small)."""
    n_ref, n_cur = view.n_reference, view.n_current
    if max(n_ref, n_cur) <= KS_EXACT_MAX_ROWS:
        reference_sample, current_sample = view.pseudo_samples()
        return float(stats.ks_2samp(reference_sample, current_sample).pvalue)
    statistic = view.ks_statistic()
    effective_n = n_ref * n_cur / (n_ref + n_cur)
    return float(np.clip(stats.kstwo.sf(statistic, np.round(effective_n)), 0.0, 1.0))


def _chi_square_p_value(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Homogeneity test of two count vectors, rare cells pooled so the chi-square holds."""
    pooled = reference_counts + current_counts
    keep = pooled > 0
    reference_counts, current_counts, pooled = (
        reference_counts[keep],
        current_counts[keep],
        pooled[keep],
    )
    total_current = current_counts.sum()
    expected_current = pooled * total_current / pooled.sum()
    rare = expected_current < CHI_SQUARE_MIN_EXPECTED
    if rare.sum() >= 1 and (~rare).sum() >= 1:
        reference_counts = np.append(reference_counts[~rare], reference_counts[rare].sum())
        current_counts = np.append(current_counts[~rare], current_counts[rare].sum())
    if reference_counts.size < 2:
        return 1.0
    table = np.vstack([reference_counts, current_counts]).astype(np.float64)
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _category_vectors(
    reference: Mapping[Any, int], current: Mapping[Any, int]
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    keys = list(reference) + [key for key in current if key not in reference]
    reference_counts = np.array([reference.get(key, 0) for key in keys], dtype=np.float64)
    current_counts = np.array([current.get(key, 0) for key in keys], dtype=np.float64)
    return keys, reference_counts, current_counts


# --------------------------------------------------------------------------- verdicts


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
        profile: The reference profile (see :func:`build_reference_profile`).
        current: The batch: a DataFrame, an iterable of DataFrame chunks (read once, memory flat)
            or a :class:`BatchSummary` already accumulated.
        policy: Methods and thresholds; defaults to ``DriftPolicy()``.
        importances: Optional feature importances (non-negative, any scale) for the weighted
            share; columns without one weigh 0.

    Raises:
        DataError: a profiled column is missing from the batch.
    """
    policy = policy or DriftPolicy()
    summary = _as_summary(profile, current)
    results: dict[str, ColumnDrift] = {}
    raw_p_values: dict[str, float] = {}
    for name, column_profile in profile.numeric.items():
        result, p_value = _numeric_drift(name, column_profile, summary.numeric[name], policy)
        results[name] = result
        if p_value is not None:
            raw_p_values[name] = p_value
    for name, column_profile in profile.categorical.items():
        result, p_value = _categorical_drift(
            name, column_profile, summary.categorical[name], policy
        )
        results[name] = result
        if p_value is not None:
            raw_p_values[name] = p_value

    if raw_p_values:
        adjusted = _adjust_p_values(np.array(list(raw_p_values.values())), policy.multiple_testing)
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


def _numeric_drift(
    name: str, profile: NumericProfile, summary: _NumericSummary, policy: DriftPolicy
) -> tuple[ColumnDrift, float | None]:
    threshold = policy.effect_threshold(name, "numeric")
    discrete = profile.exact and profile.edges.size <= policy.discrete_max_values
    test = "chisquare" if discrete else "ks"
    method = f"{policy.numeric_method}+{test}"
    nulls = _null_note(profile.null_rate, summary.n_null, summary.n + summary.n_null)
    if summary.n < policy.min_rows or profile.n == 0:
        note = f"insufficient data: {summary.n} non-null values (min_rows {policy.min_rows})"
        return _no_verdict(name, "numeric", method, threshold, f"{note}; {nulls}"), None
    view = _CdfView(profile.edges, _reference_cells(profile), summary.cells, profile.n, summary.n)
    if policy.numeric_method == "wasserstein":
        score = view.wasserstein() / max(profile.std, 1e-3)
    else:
        score = view.psi(policy.psi_bins)
    if discrete:
        reference_counts = np.append(profile.edge_counts, profile.gap_counts.sum())
        current_counts = np.append(summary.cells.edge_counts, summary.cells.gap_counts.sum())
        p_value = _chi_square_p_value(reference_counts, current_counts)
    else:
        p_value = _ks_p_value(view)
    mean = summary.total / summary.n
    shift = (mean - profile.mean) / max(profile.std, 1e-12)
    note = f"mean {mean:.4g} vs {profile.mean:.4g} ({shift:+.2f} sd); {nulls}"
    return ColumnDrift(
        name, "numeric", method, float(score), p_value, threshold, False, note
    ), p_value


def _categorical_drift(
    name: str, profile: CategoricalProfile, summary: _CategoricalSummary, policy: DriftPolicy
) -> tuple[ColumnDrift, float | None]:
    threshold = policy.effect_threshold(name, "categorical")
    method = f"{policy.categorical_method}+chisquare"
    nulls = _null_note(profile.null_rate, summary.n_null, summary.n + summary.n_null)
    if summary.n < policy.min_rows or profile.n == 0:
        note = f"insufficient data: {summary.n} non-null values (min_rows {policy.min_rows})"
        return _no_verdict(name, "categorical", method, threshold, f"{note}; {nulls}"), None
    keys, reference_counts, current_counts = _category_vectors(profile.counts, summary.counts)
    reference_share = reference_counts / profile.n
    current_share = current_counts / summary.n
    if policy.categorical_method == "jensenshannon":
        score = float(distance.jensenshannon(reference_share, current_share))
    else:
        score = _psi(reference_share, current_share)
    p_value = _chi_square_p_value(reference_counts, current_counts)
    unseen = [key for key in keys if key not in profile.counts]
    unseen_rows = int(sum(summary.counts[key] for key in unseen))
    note = nulls
    if unseen:
        shown = ", ".join(repr(key) for key in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
        note = f"{len(unseen)} unseen categories in {unseen_rows} rows ({shown}); {nulls}"
    column = ColumnDrift(name, "categorical", method, score, p_value, threshold, False, note)
    column.unseen_share = unseen_rows / summary.n
    return column, p_value


def _reference_cells(profile: NumericProfile) -> _NumericCells:
    return _NumericCells(profile.edge_counts, profile.gap_counts, profile.gap_offsets)


def _no_verdict(
    name: str, kind: ColumnKind, method: str, threshold: float, note: str
) -> ColumnDrift:
    return ColumnDrift(name, kind, method, math.nan, math.nan, threshold, False, note)


def _null_note(reference_rate: float, current_nulls: int, current_total: int) -> str:
    current_rate = current_nulls / current_total if current_total else 0.0
    return f"null rate {current_rate:.1%} vs {reference_rate:.1%}"


def _adjust_p_values(p_values: np.ndarray, method: str) -> np.ndarray:
    if method == "bh":
        return stats.false_discovery_control(p_values, method="bh")
    # Holm's step-down: the i-th smallest p-value is multiplied by (m - i), kept monotone.
    order = np.argsort(p_values)
    m = p_values.size
    stepped = np.maximum.accumulate(p_values[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


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


# --------------------------------------------------------------------------- helpers


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataError(f"the {what} lacks column(s) {missing}")


def _finite_values(name: str, series: pd.Series) -> tuple[np.ndarray, int]:
    """Finite float64 values and how many were missing or infinite (Evidently drops both)."""
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
        raise DataError(f"column {name!r} should be numeric but has dtype {series.dtype}")
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    return values[finite], int(values.size - finite.sum())


def _category_counts(series: pd.Series) -> dict[Any, int]:
    counts = series.value_counts(dropna=True, sort=False)
    # pandas Categorical columns list unused categories with count 0: they are not values.
    return {_native(key): int(count) for key, count in counts.items() if count}


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
