"""Promotion gate decisions: pure comparisons of metrics, no registry access."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from loopml.gate_stats import (
    PairedDifference,
    improvement,
    relative_bounds,
    scaled_improvement,
)
from loopml.metrics import metric_direction

__all__ = [
    "GateDecision",
    "PairedDifference",
    "bound_text",
    "decide_promotion",
    "decide_retrain_promotion",
    "improvement",
    "metric_direction",
    "relative_bounds",
    "scaled_improvement",
]


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
    paired: PairedDifference | None = None,
) -> GateDecision:
    """Promote when there is no champion, or the candidate beats it by ``min_improvement``.

    Both scores must come from the same held-out rows. With ``paired`` (the bootstrap of the
    difference on those rows) the candidate must be better with confidence: a difference inside
    its own interval is noise and never promotes.
    """
    if champion_score is None:
        return GateDecision(
            promote=True,
            reason="no champion yet: the first version that passes validation becomes champion",
            metric=metric,
            comparisons={"held_out": _comparison(candidate_score, None, metric, min_improvement)},
        )
    comparisons = {
        "held_out": _comparison(candidate_score, champion_score, metric, min_improvement, paired)
    }
    if paired is not None:
        promote = paired.better_by(min_improvement)
        verb = "is better than" if promote else "is not better with confidence than"
        return GateDecision(
            promote=promote,
            reason=(
                f"candidate {verb} the champion on the same held-out rows: {paired.text()} "
                f"(margin {bound_text(min_improvement, metric)})"
            ),
            metric=metric,
            comparisons=comparisons,
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
        comparisons=comparisons,
    )


def decide_retrain_promotion(
    *,
    frozen: PairedDifference,
    recent: PairedDifference | None,
    drift_confirmed: bool,
    drift_note: str = "",
    min_improvement: float,
    old_data_tolerance: float,
    catastrophic_loss: float,
) -> GateDecision:
    """The retraining gate: follow the traffic, keep the frozen set as a guard.

    The challenger is promoted when it is better than the champion *with confidence* on the
    most recent labelled rows it did not learn from (``recent``). The frozen pre-drift held-out
    set (``frozen``) vetoes a loss beyond ``old_data_tolerance`` only while the traffic still
    looks like it; once a drift is confirmed (``drift_confirmed``) that distribution no longer
    arrives, and the frozen set only blocks a catastrophic loss (beyond ``catastrophic_loss``).
    Without recent rows the frozen set decides alone, with the same confidence rule.

    What counts as catastrophic scales with the change itself: a challenger may lose on the old
    rows as much as the champion lost on the new ones (the champion's recent score against its
    frozen-set score). Where the new relation contradicts the old (prices re-set), a model
    that learnt it *must* lose on the old rows; a broken model is still refused, because it is
    not better with confidence on the recent rows.

    Every reason states both comparisons with their intervals.
    """
    metric = frozen.metric
    limit = catastrophic_loss if drift_confirmed else old_data_tolerance
    guard = "catastrophic-loss guard" if drift_confirmed else "veto"
    if drift_confirmed and recent is not None:
        champion_loss = -scaled_improvement(recent.champion, frozen.champion, metric)
        if champion_loss > limit:
            limit = champion_loss
            guard = "catastrophic-loss guard (the champion's own loss on the recent rows)"
    comparisons = {
        "frozen_held_out": _comparison(frozen.candidate, frozen.champion, metric, -limit, frozen)
    }
    context = (
        f"frozen held-out set: {frozen.text()}, {guard} at a loss of {bound_text(limit, metric)}"
        + (f" ({drift_note})" if drift_note else "")
    )
    if recent is not None:
        comparisons["recent_window"] = _comparison(
            recent.candidate, recent.champion, metric, min_improvement, recent
        )
        context = f"recent rows: {recent.text()}; {context}"
    if frozen.gain < -limit:
        what = "a catastrophic loss" if drift_confirmed else "a loss beyond the tolerance"
        reason = f"refused: {what} on the frozen held-out set; {context}"
        return GateDecision(promote=False, reason=reason, metric=metric, comparisons=comparisons)
    judged, where = (
        (recent, "the recent rows")
        if recent is not None
        else (frozen, "the frozen held-out set (no recent labelled rows)")
    )
    promote = judged.better_by(min_improvement)
    if promote:
        reason = f"promoted: the challenger is better with confidence on {where}; {context}"
    else:
        reason = (
            f"refused: the challenger is not better with confidence on {where} "
            f"(margin {bound_text(min_improvement, metric)}); {context}"
        )
    return GateDecision(promote=promote, reason=reason, metric=metric, comparisons=comparisons)


def _comparison(
    candidate: float,
    champion: float | None,
    metric: str,
    bound: float,
    paired: PairedDifference | None = None,
) -> dict[str, float | None]:
    interval = {}
    if paired is not None:
        interval = {
            "interval_low": paired.low,
            "interval_high": paired.high,
            "alpha": paired.alpha,
            "rows": paired.rows,
        }
    return {
        **interval,
        "candidate": float(candidate),
        "champion": None if champion is None else float(champion),
        "improvement": None if champion is None else improvement(candidate, champion, metric),
        "scaled_improvement": (
            None if champion is None else scaled_improvement(candidate, champion, metric)
        ),
        "required_improvement": float(bound),
        "bound_units": "fraction of champion" if relative_bounds(metric) else "absolute",
    }
