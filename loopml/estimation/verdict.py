"""The estimated performance verdict: degraded only when the confident bound says so."""

from __future__ import annotations

from typing import Any

from loopml.estimation.estimator import LEVEL
from loopml.gate import relative_bounds, scaled_improvement


def estimated_verdict(
    estimates: dict[str, dict[str, float | None]],
    reference_metrics: dict[str, float],
    *,
    metric: str,
    max_drop: float,
    method: str,
    rows: int,
    min_rows: int,
) -> dict[str, Any]:
    """The estimated counterpart of :func:`loopml.monitoring.performance_verdict`.

    Degraded only when the *confident* bound (the one-sided bound on the bad side) is past
    ``max_drop``: an estimate that merely dips below it is reported, not acted on.
    """
    verdict: dict[str, Any] = {
        "method": method,
        "metric": metric,
        "rows": rows,
        "level": LEVEL,
        "estimates": estimates,
        "reference": reference_metrics.get(metric),
        "drop": None,
        "confident_drop": None,
        "max_drop": max_drop,
        "drop_units": "fraction of champion" if relative_bounds(metric) else "absolute",
        "degraded": False,
        "estimated": True,
    }
    entry = estimates.get(metric)
    if entry is None or entry.get("value") is None:
        verdict["note"] = f"{metric} cannot be estimated without labels by {method}"
        return verdict
    if rows < min_rows:
        verdict["note"] = f"only {rows} rows (< {min_rows}): no estimated verdict"
        return verdict
    if verdict["reference"] is None:
        verdict["note"] = f"the champion has no held-out {metric}"
        return verdict
    verdict["drop"] = -scaled_improvement(entry["value"], verdict["reference"], metric)
    bound = entry.get("bound")
    if bound is not None:
        verdict["confident_drop"] = -scaled_improvement(bound, verdict["reference"], metric)
        verdict["degraded"] = verdict["confident_drop"] > max_drop
    return verdict


def flat_estimates(verdict: dict[str, Any] | None) -> dict[str, float | None]:
    """``estimated_<metric>`` (+ ``_lower`` / ``_upper``) keys for the ``--json`` result."""
    flat: dict[str, float | None] = {}
    for metric, entry in ((verdict or {}).get("estimates") or {}).items():
        flat[f"estimated_{metric}"] = entry.get("value")
        flat[f"estimated_{metric}_lower"] = entry.get("lower")
        flat[f"estimated_{metric}_upper"] = entry.get("upper")
    return flat
