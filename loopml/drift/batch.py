"""A batch reduced to histograms on a reference profile's bins, read whole or chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopml.drift.profile import (
    NumericProfile,
    ReferenceProfile,
    category_counts,
    finite_values,
    map_columns,
    require_columns,
)


@dataclass
class NumericCells:
    """Counts on a numeric profile's edges and in its gaps, with the gaps' offsets (see
    :class:`~loopml.drift.profile.NumericProfile`)."""

    edge_counts: np.ndarray
    gap_counts: np.ndarray
    gap_offsets: np.ndarray

    @classmethod
    def empty(cls, n_edges: int) -> NumericCells:
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
class NumericSummary:
    """One numeric column of a batch: its cells, sizes and sum."""

    cells: NumericCells
    n: int = 0
    n_null: int = 0
    total: float = 0.0
    # Counts of values absent from an exact reference with <= 5 values (see _UNSEEN_VALUES_TRACKED).
    unseen_counts: dict[float, int] = field(default_factory=dict)


@dataclass
class CategoricalSummary:
    """One categorical column of a batch: category counts (missing values counted apart)."""

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
    :func:`~loopml.drift.verdict.detect_drift` (and the benchmarks' Evidently equivalent) on it.
    """

    numeric: dict[str, NumericSummary]
    categorical: dict[str, CategoricalSummary]
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
            name: NumericSummary(cells=NumericCells.empty(column.edges.size))
            for name, column in profile.numeric.items()
        },
        categorical={name: CategoricalSummary() for name in profile.categorical},
    )
    chunks = [current] if isinstance(current, pd.DataFrame) else current
    for chunk in chunks:
        require_columns(chunk, profile.columns, "current batch")
        summary.n_rows += len(chunk)
        # Each column adds into its own summary: the threads share nothing.
        columns = [
            (summary.numeric[name], column_profile, name, chunk[name])
            for name, column_profile in profile.numeric.items()
        ]
        for _ in map_columns(lambda column: _add_numeric_chunk(*column), columns):
            pass
        for name, column_summary in summary.categorical.items():
            counts = category_counts(chunk[name])
            for key, count in counts.items():
                column_summary.counts[key] = column_summary.counts.get(key, 0) + count
            n = int(sum(counts.values()))
            column_summary.n += n
            column_summary.n_null += len(chunk) - n
    return summary


def _add_numeric_chunk(
    summary: NumericSummary, profile: NumericProfile, name: str, series: pd.Series
) -> None:
    values, n_null = finite_values(name, series)
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


def as_summary(
    profile: ReferenceProfile, current: pd.DataFrame | Iterable[pd.DataFrame] | BatchSummary
) -> BatchSummary:
    """``current`` as a :class:`BatchSummary` on ``profile``'s bins (accumulated unless it is)."""
    return current if isinstance(current, BatchSummary) else summarize_batch(profile, current)


def reference_cells(profile: NumericProfile) -> NumericCells:
    """The reference's own cells, to compare with a batch's."""
    return NumericCells(profile.edge_counts, profile.gap_counts, profile.gap_offsets)
