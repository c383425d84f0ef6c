"""Drift statistics on a profile's histograms: KS, Wasserstein, PSI, Jensen-Shannon inputs,
chi-square, and the correction for testing many columns at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from loopml.drift.batch import NumericCells

# scipy.stats.ks_2samp computes exact p-values up to this sample size and Smirnov's asymptotic
# formula beyond it; we follow the same switch so our p-values match scipy's (and Evidently's).
KS_EXACT_MAX_ROWS = 10_000
# Chi-square needs expected counts of about 5 per cell; rarer categories are pooled into one cell.
CHI_SQUARE_MIN_EXPECTED = 5.0
PSI_FLOOR = 1e-4  # share substituted for empty bins, so PSI stays finite


@dataclass
class CdfView:
    """Both empirical CDFs on a numeric profile's edges (reference and current)."""

    edges: np.ndarray
    reference: NumericCells
    current: NumericCells
    n_reference: int
    n_current: int

    def _cdfs(self, cells: NumericCells, n: int) -> tuple[np.ndarray, np.ndarray]:
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

    def _pseudo(self, cells: NumericCells) -> np.ndarray:
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
        return population_stability_index(ref_share, cur_share)


def _interleave(cells: NumericCells) -> np.ndarray:
    """Cell counts in value order: gap 0, edge 0, gap 1, edge 1, ..., gap m."""
    ordered = np.empty(cells.gap_counts.size + cells.edge_counts.size, dtype=np.float64)
    ordered[0::2] = cells.gap_counts
    ordered[1::2] = cells.edge_counts
    return ordered


def population_stability_index(reference_share: np.ndarray, current_share: np.ndarray) -> float:
    """PSI of two share vectors over the same cells; empty cells count as :data:`PSI_FLOOR`."""
    keep = (reference_share > 0) | (current_share > 0)
    reference_share = np.maximum(reference_share[keep], PSI_FLOOR)
    current_share = np.maximum(current_share[keep], PSI_FLOOR)
    return float(
        np.sum((current_share - reference_share) * np.log(current_share / reference_share))
    )


def ks_p_value(view: CdfView) -> float:
    """Two-sided KS p-value as scipy.stats.ks_2samp computes it (exact when small)."""
    n_ref, n_cur = view.n_reference, view.n_current
    if max(n_ref, n_cur) <= KS_EXACT_MAX_ROWS:
        reference_sample, current_sample = view.pseudo_samples()
        return float(stats.ks_2samp(reference_sample, current_sample).pvalue)
    statistic = view.ks_statistic()
    effective_n = n_ref * n_cur / (n_ref + n_cur)
    return float(np.clip(stats.kstwo.sf(statistic, np.round(effective_n)), 0.0, 1.0))


def chi_square_p_value(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
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


def category_vectors(
    reference: Mapping[Any, int], current: Mapping[Any, int]
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Both count vectors on one key order: the reference's categories, then the new ones."""
    keys = list(reference) + [key for key in current if key not in reference]
    reference_counts = np.array([reference.get(key, 0) for key in keys], dtype=np.float64)
    current_counts = np.array([current.get(key, 0) for key in keys], dtype=np.float64)
    return keys, reference_counts, current_counts


def adjust_p_values(p_values: np.ndarray, method: str) -> np.ndarray:
    """P-values corrected for testing them together: Benjamini-Hochberg (``bh``) or Holm."""
    if method == "bh":
        return stats.false_discovery_control(p_values, method="bh")
    # Holm's step-down: the i-th smallest p-value is multiplied by (m - i), kept monotone.
    order = np.argsort(p_values)
    m = p_values.size
    stepped = np.maximum.accumulate(p_values[order] * (m - np.arange(m)))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
