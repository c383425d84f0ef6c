"""Promotion gate decisions: pure comparisons of metrics, no registry access."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from loopml.metrics import is_bounded, metric_direction


def improvement(candidate: float, champion: float, metric: str) -> float:
    """How much better the candidate is (positive = better), in the metric's own units."""
    if metric_direction(metric) == "minimize":
        return champion - candidate
    return candidate - champion


def relative_bounds(metric: str) -> bool:
    """Whether margins and tolerances on ``metric`` are fractions of the champion's value.

    Error metrics (RMSE, MAE, log-loss ...) are in the target's own units, so an absolute bound
    such as 0.02 means nothing on a price in dollars; metrics on a fixed scale (ROC-AUC, F1,
    accuracy, Brier, R²) keep absolute bounds (:func:`loopml.metrics.is_bounded`).
    """
    return not is_bounded(metric)


def scaled_improvement(candidate: float, champion: float, metric: str) -> float:
    """The improvement in the units margins are stated in (see :func:`relative_bounds`)."""
    gain = improvement(candidate, champion, metric)
    if relative_bounds(metric):
        return gain / max(abs(champion), 1e-12)
    return gain


def bound_text(bound: float, metric: str) -> str:
    """A margin as people read it: ``0.02`` or ``2% of the champion's rmse``."""
    if relative_bounds(metric):
        return f"{bound:.0%} of the champion's {metric}"
    return f"{bound:g}"


@dataclass
class GateDecision:
    """Why a version was (or was not) promoted.

    Attributes:
        promote: whether the candidate becomes champion.
        reason: one sentence for humans.
        metric: the gate metric.
        comparisons: named comparisons, each with candidate, champion, improvement and the bound.
    """

    promote: bool
    reason: str
    metric: str
    comparisons: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    candidate_score: float,
    champion_score: float | None,
    *,
    metric: str,
    min_improvement: float,
) -> GateDecision:
    """Promote when there is no champion, or the candidate beats it by ``min_improvement``.

    Both scores must come from the same held-out rows.
    """
    if champion_score is None:
        return GateDecision(
            promote=True,
            reason="no champion yet: the first version that passes validation becomes champion",
            metric=metric,
            comparisons={"held_out": _comparison(candidate_score, None, metric, min_improvement)},
        )
    gain = scaled_improvement(candidate_score, champion_score, metric)
    promote = gain > min_improvement if min_improvement > 0 else gain > 0
    verb = "beats" if promote else "does not beat"
    return GateDecision(
        promote=promote,
        reason=(
            f"candidate {metric}={candidate_score:.4f} {verb} champion {champion_score:.4f} "
            f"on the same held-out data (margin {bound_text(min_improvement, metric)})"
        ),
        metric=metric,
        comparisons={
            "held_out": _comparison(candidate_score, champion_score, metric, min_improvement)
        },
    )


def decide_retrain_promotion(
    *,
    candidate_old: float,
    champion_old: float,
    candidate_recent: float | None,
    champion_recent: float | None,
    metric: str,
    old_data_tolerance: float,
    min_improvement: float,
) -> GateDecision:
    """Retraining gate: no worse than ``old_data_tolerance`` on the frozen held-out set AND
    better than the champion on the most recent labelled window.

    Without a recent window (no labels yet) the frozen held-out set decides alone.
    """
    comparisons = {
        "frozen_held_out": _comparison(candidate_old, champion_old, metric, -old_data_tolerance),
    }
    old_gain = scaled_improvement(candidate_old, champion_old, metric)
    if old_gain < -old_data_tolerance:
        lost = improvement(candidate_old, champion_old, metric)
        return GateDecision(
            promote=False,
            reason=(
                f"challenger loses {-lost:.4f} {metric} on the frozen held-out set "
                f"({candidate_old:.4f} vs {champion_old:.4f}; "
                f"tolerance {bound_text(old_data_tolerance, metric)})"
            ),
            metric=metric,
            comparisons=comparisons,
        )
    if candidate_recent is None or champion_recent is None:
        decision = decide_promotion(
            candidate_old, champion_old, metric=metric, min_improvement=min_improvement
        )
        decision.comparisons = comparisons
        decision.reason = "no recent labelled window; " + decision.reason
        return decision
    comparisons["recent_window"] = _comparison(
        candidate_recent, champion_recent, metric, min_improvement
    )
    recent_gain = scaled_improvement(candidate_recent, champion_recent, metric)
    promote = recent_gain > min_improvement if min_improvement > 0 else recent_gain > 0
    if promote:
        reason = (
            f"challenger beats champion on the recent window ({metric} {candidate_recent:.4f} vs "
            f"{champion_recent:.4f}) and holds up on the frozen held-out set "
            f"({candidate_old:.4f} vs {champion_old:.4f})"
        )
    else:
        reason = (
            f"challenger does not beat champion on the recent window ({metric} "
            f"{candidate_recent:.4f} vs {champion_recent:.4f}, "
            f"margin {bound_text(min_improvement, metric)})"
        )
    return GateDecision(promote=promote, reason=reason, metric=metric, comparisons=comparisons)


def _comparison(
    candidate: float, champion: float | None, metric: str, bound: float
) -> dict[str, float | None]:
    return {
        "candidate": float(candidate),
        "champion": None if champion is None else float(champion),
        "improvement": None if champion is None else improvement(candidate, champion, metric),
        "scaled_improvement": (
            None if champion is None else scaled_improvement(candidate, champion, metric)
        ),
        "required_improvement": float(bound),
        "bound_units": "fraction of champion" if relative_bounds(metric) else "absolute",
    }
