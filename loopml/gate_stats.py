"""Statistics behind the promotion gate: paired comparisons on the same rows, drift confirmation.

Two models scored on the same rows differ by much less noise than two independent scores: the
rows that are hard for one are hard for the other. A paired bootstrap (resample row positions,
score both models on the same resample, keep the difference) gives an interval for the
difference for any metric, so a challenger is promoted only when it is better *with confidence*,
never on a raw difference over a few hundred rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loopml.metrics import is_bounded, metric_direction

RowScores = Callable[[np.ndarray], tuple[float, float]]


def relative_bounds(metric: str) -> bool:
    """Whether margins on ``metric`` are fractions of the champion's value (error metrics are
    in the target's own units; metrics on a fixed scale such as ROC-AUC, F1, Brier or R² keep
    absolute margins: :func:`loopml.metrics.is_bounded`)."""
    return not is_bounded(metric)


def improvement(candidate: float, champion: float, metric: str) -> float:
    """How much better the candidate is (positive = better), in the metric's own units."""
    if metric_direction(metric) == "minimize":
        return champion - candidate
    return candidate - champion


def scaled_improvement(candidate: float, champion: float, metric: str) -> float:
    """The improvement in the units margins are stated in (see :func:`relative_bounds`)."""
    gain = improvement(candidate, champion, metric)
    if relative_bounds(metric):
        return gain / max(abs(champion), 1e-12)
    return gain


@dataclass(frozen=True)
class PairedDifference:
    """Candidate vs champion on the same rows, with the bootstrap interval of the difference.

    ``gain``, ``low`` and ``high`` are in the gate's units (absolute for bounded scores, a
    fraction of the champion's value for error metrics), positive when the candidate is better.
    ``low``/``high`` are the one-sided ``alpha`` bounds (a ``1 - 2 * alpha`` interval).
    """

    metric: str
    rows: int
    candidate: float
    champion: float
    gain: float
    low: float
    high: float
    alpha: float

    def better_by(self, margin: float = 0.0) -> bool:
        """The candidate is better by more than ``margin`` with confidence ``1 - alpha``."""
        return math.isfinite(self.low) and self.low > max(margin, 0.0)

    def worse_by(self, margin: float) -> bool:
        """The candidate is worse by more than ``margin`` with confidence ``1 - alpha``."""
        return math.isfinite(self.high) and self.high < -margin

    def text(self) -> str:
        """``roc_auc 0.612 vs 0.571 (+0.041, 90% interval +0.012 to +0.070, 180 rows)``."""
        unit = "%" if relative_bounds(self.metric) else ""
        scale = 100.0 if unit else 1.0

        def signed(value: float) -> str:
            return f"{value * scale:+.3g}{unit}" if math.isfinite(value) else "n/a"

        return (
            f"{self.metric} {self.candidate:.4g} vs {self.champion:.4g} ({signed(self.gain)}, "
            f"{1 - 2 * self.alpha:.0%} interval {signed(self.low)} to {signed(self.high)}, "
            f"{self.rows} rows)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    scores: RowScores,
    rows: int,
    *,
    metric: str,
    alpha: float,
    resamples: int = 1000,
    seed: int = 0,
) -> PairedDifference:
    """Bootstrap the difference between two models scored on the same resampled rows.

    Args:
        scores: positions -> (candidate's metric, champion's metric) on the rows at them.
        rows: how many rows there are.
        metric: the metric ``scores`` returns (its direction decides the sign of the gain).
        alpha: one-sided level of the interval bounds.
        resamples: bootstrap resamples; resamples where the metric is undefined are dropped.
        seed: the resampling seed (the same rows give the same interval).

    Returns:
        The point difference on all rows and its interval; the bounds are NaN when the metric is
        undefined on most resamples (then nothing can be "better with confidence").
    """
    candidate, champion = scores(np.arange(rows))
    gain = scaled_improvement(candidate, champion, metric)
    generator = np.random.default_rng(seed)
    gains = []
    for _ in range(resamples if rows > 1 else 0):
        picked = generator.integers(0, rows, rows)
        value = scaled_improvement(*scores(picked), metric)
        if math.isfinite(value):
            gains.append(value)
    if len(gains) < max(resamples // 2, 2):
        low = high = float("nan")
    else:
        low, high = (float(q) for q in np.quantile(gains, [alpha, 1 - alpha]))
    return PairedDifference(
        metric=metric,
        rows=rows,
        candidate=float(candidate),
        champion=float(champion),
        gain=float(gain),
        low=low,
        high=high,
        alpha=alpha,
    )


def drift_confirmed(
    history: Iterable[dict[str, Any]], *, batches: int, confirmations: int
) -> tuple[bool, str]:
    """Whether the traffic has persistently left the distribution the frozen set comes from.

    Confirmed when drift was detected on at least ``confirmations`` of the last ``batches``
    monitored batches (verdicts in time order), or when performance was judged degraded on any
    of them: that verdict is already a tested loss on labelled rows, i.e. the relation the
    frozen set holds no longer holds. A single drifting batch alone is not enough.

    Returns:
        ``(confirmed, why)``: ``why`` is a short phrase for the decision sentence.
    """
    recent = list(history)[-batches:] if batches > 0 else []
    drifted = sum(1 for verdict in recent if verdict.get("drift_detected"))
    degraded = sum(1 for verdict in recent if verdict.get("performance_degraded"))
    confirmed = drifted >= confirmations or degraded > 0
    return confirmed, (
        f"drift on {drifted} and degraded performance on {degraded} of the last "
        f"{len(recent)} monitored batches"
    )
