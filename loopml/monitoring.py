"""Monitoring verdicts: batch drift, prediction drift, performance against the champion."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml import metrics
from loopml.config import DriftPolicy, ProjectConfig
from loopml.drift.profile import build_reference_profile
from loopml.drift.verdict import detect_drift
from loopml.gate import relative_bounds, scaled_improvement
from loopml.ledger import append_jsonl
from loopml.metrics import Outcomes

PREDICTION_SCORE = "prediction_score"


class ReservoirSample:
    """A uniform random sample of at most ``size`` rows over a stream of chunks (flat memory)."""

    def __init__(self, size: int, random_state: int = 0) -> None:
        self.size = size
        self.rows_seen = 0
        self._rng = np.random.default_rng(random_state)
        self._sample: pd.DataFrame | None = None
        self._keys = np.empty(0)

    def add(self, chunk: pd.DataFrame) -> None:
        keys = self._rng.random(len(chunk))
        self.rows_seen += len(chunk)
        combined = chunk if self._sample is None else pd.concat([self._sample, chunk])
        all_keys = np.concatenate([self._keys, keys])
        if len(combined) > self.size:
            keep = np.argpartition(all_keys, self.size)[: self.size]
            keep.sort()
            combined, all_keys = combined.iloc[keep], all_keys[keep]
        self._sample, self._keys = combined, all_keys

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame() if self._sample is None else self._sample.reset_index(drop=True)


def sampled(chunks: Iterable[pd.DataFrame], sample: ReservoirSample) -> Iterator[pd.DataFrame]:
    """Pass chunks through while filling ``sample``."""
    for chunk in chunks:
        sample.add(chunk)
        yield chunk


def prediction_drift(
    reference_scores: np.ndarray, current_scores: np.ndarray, policy: DriftPolicy
) -> dict[str, Any]:
    """Drift of the model's output (positive-class probability, or the predicted value)."""
    reference = pd.DataFrame({PREDICTION_SCORE: np.asarray(reference_scores, dtype=float)})
    current = pd.DataFrame({PREDICTION_SCORE: np.asarray(current_scores, dtype=float)})
    profile = build_reference_profile(reference, [PREDICTION_SCORE], [])
    verdict = detect_drift(profile, current, policy)
    column = verdict.columns[PREDICTION_SCORE].to_dict()
    return {
        "drifted": bool(column.get("drifted")),
        "method": column.get("method"),
        "score": column.get("score"),
        "p_value": column.get("p_value"),
        "threshold": column.get("threshold"),
        "reference_mean": float(np.nanmean(reference_scores)) if len(reference_scores) else None,
        "current_mean": float(np.nanmean(current_scores)) if len(current_scores) else None,
    }


def performance_verdict(
    current: dict[str, float],
    reference: dict[str, float],
    *,
    metric: str,
    max_drop: float,
    rows: int,
    min_rows: int,
    standard_error: float | None = None,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Compare batch metrics with the champion's held-out metrics; degraded beyond ``max_drop``.

    ``max_drop`` is absolute for bounded scores (ROC-AUC 0.91 -> 0.85 is a drop of 0.06) and a
    fraction of the champion's value for error metrics (RMSE 10 -> 12 is a drop of 0.2).

    With the batch metric's ``standard_error`` and a level ``alpha``, the drop must also exceed
    its sampling noise (one-sided, z(1 - alpha) standard errors): on 60 labelled rows an AUC
    moves by about 0.06 from chance alone, which would otherwise read as a degradation.
    """
    verdict: dict[str, Any] = {
        "metric": metric,
        "rows": rows,
        "current": current,
        "reference": {metric: reference.get(metric)},
        "degraded": False,
        "drop": None,
        "max_drop": max_drop,
        "drop_units": "fraction of champion" if relative_bounds(metric) else "absolute",
    }
    if rows < min_rows:
        verdict["note"] = f"only {rows} labelled rows (< {min_rows}): no performance verdict"
        return verdict
    if metric not in current or reference.get(metric) is None:
        verdict["note"] = f"{metric} is not defined on this batch"
        return verdict
    drop = -scaled_improvement(current[metric], reference[metric], metric)
    verdict["drop"] = drop
    verdict["degraded"] = drop > max_drop
    if standard_error is not None and alpha is not None:
        from scipy.stats import norm

        scale = abs(reference[metric]) if relative_bounds(metric) else 1.0
        noise = float(norm.ppf(1 - alpha)) * standard_error / max(scale, 1e-12)
        verdict["standard_error"] = standard_error
        verdict["noise_bound"] = noise
        if verdict["degraded"] and drop <= noise:
            verdict["degraded"] = False
            verdict["note"] = (
                f"the drop is within the sampling noise of {rows} labelled rows "
                f"(below {noise:.4g} at alpha {alpha:g})"
            )
    return verdict


def batch_outcomes(
    config: ProjectConfig, y_true: Any, y_pred: Any, y_proba: Any = None
) -> Outcomes:
    """A labelled batch's outcomes as logged: labels, predictions and (binary) the
    positive-class probability; multiclass logs keep the top-class probability only."""
    kind = config.task_kind
    if kind == "regression":
        return metrics.regression_outcomes(y_true, y_pred)
    if kind == "binary":
        return metrics.binary_outcomes(y_true, y_pred, config.positive_label, y_proba)
    return metrics.multiclass_outcomes(y_true, y_pred)


def batch_metrics(outcomes: Outcomes) -> dict[str, float]:
    """Every metric monitoring can compute on a labelled batch that is defined on it."""
    return metrics.defined(outcomes, metrics.monitorable_metrics(outcomes.kind))


def judge_performance(
    config: ProjectConfig,
    reference_metrics: dict[str, float],
    y_true: Any,
    y_pred: Any,
    y_proba: Any = None,
) -> dict[str, Any]:
    """The batch's metrics and the verdict against the champion's held-out metrics, with the
    sampling noise of the judged metric (bootstrap) when ``monitoring.performance.alpha`` is set.
    """
    policy = config.monitoring.performance
    metric = config.performance_metric
    outcomes = batch_outcomes(config, y_true, y_pred, y_proba)
    if len(outcomes) == 0:
        raise ValueError("no labelled rows to measure performance on")
    standard_error = None
    if policy.alpha is not None and len(outcomes) >= policy.min_labelled_rows:
        standard_error = metrics.standard_error(metric, outcomes)
    return performance_verdict(
        batch_metrics(outcomes),
        reference_metrics,
        metric=metric,
        max_drop=policy.max_drop,
        rows=len(outcomes),
        min_rows=policy.min_labelled_rows,
        standard_error=standard_error,
        alpha=policy.alpha,
    )


@dataclass(frozen=True)
class MonitoringVerdict:
    """What monitoring concluded about one batch: built once (:func:`verdict_record`) and
    serialised once (:meth:`to_dict`) for ``--json``, ``latest.json``/``history.jsonl`` and the
    flow's result; :meth:`event_payload` is what the drift and degradation events carry.

    Attributes:
        project: the project name.
        batch_id: the batch's id (its content hash unless given).
        checked_at: when the check ran (ISO 8601, seconds).
        model_version: the champion version the batch was judged with.
        reference: what the batch was compared with (the champion's training data or a file).
        rows: rows read from the batch.
        drift: the data-drift verdict (:meth:`loopml.drift.verdict.DriftVerdict.to_dict`).
        prediction_drift: drift of the champion's outputs (:func:`prediction_drift`).
        performance: the verdict on labelled rows (:func:`performance_verdict`), or ``None``.
        labelled_rows_kept: labelled rows kept for the next retraining.
        report_path: the Evidently HTML report.
        evidently_run: the report's run id in the Evidently workspace, if it was added.
    """

    project: str
    batch_id: str
    checked_at: str
    model_version: str
    reference: str
    rows: int
    drift: dict[str, Any]
    prediction_drift: dict[str, Any]
    performance: dict[str, Any] | None
    labelled_rows_kept: int
    report_path: str
    evidently_run: str | None
    # Estimated performance without labels (issue 17, CBPE / DLE) goes here: keys such as
    # "estimated_roc_auc" with their interval, merged into to_dict() when present.
    estimated_performance: dict[str, Any] = field(default_factory=dict)
    # The ledger entry when these labelled rows rolled the champion back (issue 12).
    rolled_back: dict[str, Any] | None = None
    # The rule that decided the batch (verdict_reason) and the UI pages that show it.
    reason: str = ""
    links: dict[str, str] = field(default_factory=dict)

    @property
    def drift_detected(self) -> bool:
        return bool(self.drift["drift_detected"])

    @property
    def drifted_columns(self) -> list[str]:
        return list(self.drift["drifted_columns"])

    @property
    def performance_degraded(self) -> bool:
        return bool(self.performance and self.performance.get("degraded"))

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready keys (the ``loopml monitor --json`` contract)."""
        columns = self.drift["columns"]
        return {
            "project": self.project,
            "batch_id": self.batch_id,
            "checked_at": self.checked_at,
            "model_version": self.model_version,
            "reference": self.reference,
            "rows": self.rows,
            "status": self.drift["status"],
            "reason": self.reason,
            "drift_detected": self.drift_detected,
            "drift_share": self.drift["drift_share"],
            "weighted_drift_share": self.drift["weighted_drift_share"],
            "drifted_columns": self.drifted_columns,
            "drifted_columns_detail": [columns[c] for c in self.drifted_columns],
            "drifted_column_scores": {c: columns[c]["score"] for c in self.drifted_columns},
            "columns": columns,
            "prediction_drift": self.prediction_drift,
            "performance": self.performance,
            "performance_degraded": self.performance_degraded,
            "labelled_rows_kept": self.labelled_rows_kept,
            "report_path": self.report_path,
            "evidently_run": self.evidently_run,
            "rolled_back": self.rolled_back,
            "links": self.links,
            **self.estimated_performance,
        }

    def event_payload(self) -> dict[str, Any]:
        """What ``loopml.drift.detected`` carries (and, with :meth:`degradation_payload`'s
        additions, ``loopml.performance.degraded``)."""
        return {
            "batch_id": self.batch_id,
            "model_version": self.model_version,
            "reason": self.reason,
            "drift_share": self.drift["drift_share"],
            "weighted_drift_share": self.drift["weighted_drift_share"],
            "drifted_columns": self.drifted_columns,
            "prediction_drift": self.prediction_drift.get("drifted"),
            "report_path": self.report_path,
            "report_url": self.links.get("Evidently report"),
            "rows": self.rows,
        }

    def degradation_payload(self) -> dict[str, Any]:
        """What ``loopml.performance.degraded`` carries: the drift payload and the metric."""
        performance = self.performance or {}
        metric = performance.get("metric")
        return {
            **self.event_payload(),
            "metric": metric,
            "drop": performance.get("drop"),
            "current": (performance.get("current") or {}).get(metric),
        }


def verdict_reason(
    drift: dict[str, Any],
    performance: dict[str, Any] | None,
    *,
    drift_share: float,
    weighted_drift_share: float,
) -> str:
    """The rule that decided the batch, in one line, so every UI states the same verdict.

    ``drift`` is :meth:`loopml.drift.verdict.DriftVerdict.to_dict`; ``drift_share`` and
    ``weighted_drift_share`` are the policy's limits. The weighted rule is named first when it
    fired (it is the one importance-aware), then the plain share, then a degradation. Without a
    firing rule the line names the closest one, e.g. "no drift: drift share 0.11 < 0.15".
    """
    share = float(drift.get("drift_share") or 0.0)
    weighted = drift.get("weighted_drift_share")
    fired: list[str] = []
    if weighted is not None and weighted >= weighted_drift_share:
        fired.append(f"weighted drift share {weighted:.2f} >= {weighted_drift_share:.2f}")
    if drift.get("status") != "insufficient_data" and share >= drift_share:
        fired.append(f"drift share {share:.2f} >= {drift_share:.2f}")
    for column in drift.get("unseen_columns") or []:
        unseen = float((drift.get("columns") or {}).get(column, {}).get("unseen_share") or 0.0)
        fired.append(f"{column}: {unseen:.0%} of rows in categories the reference never had")
    if performance and performance.get("degraded"):
        fired.append(
            f"{performance['metric']} dropped {performance['drop']:.3f} > "
            f"{performance['max_drop']:.3f} ({performance.get('drop_units', 'absolute')})"
        )
    if fired:
        return "; ".join(fired)
    if drift.get("status") == "insufficient_data":
        return "no verdict: too few rows to judge drift"
    quiet = [f"drift share {share:.2f} < {drift_share:.2f}"]
    if weighted is not None:
        quiet.append(f"weighted {weighted:.2f} < {weighted_drift_share:.2f}")
    return "no drift: " + ", ".join(quiet)


def verdict_record(
    *,
    project: str,
    batch_id: str,
    checked_at: datetime,
    model_version: str,
    reference: str,
    rows: int,
    drift: dict[str, Any],
    prediction_drift: dict[str, Any],
    performance: dict[str, Any] | None,
    labelled_rows: int,
    report_path: Path,
    evidently_run: Any,
    estimation: dict[str, Any] | None = None,
    rolled_back: dict[str, Any] | None = None,
    reason: str = "",
    links: dict[str, str] | None = None,
) -> MonitoringVerdict:
    """One batch's monitoring verdict from the checks' results (the one place it is built).

    ``estimation``: the estimated-performance and stream-detector keys
    (``tasks.estimation.estimation_fields``), kept in ``estimated_performance``. ``reason`` is
    :func:`verdict_reason`; ``links`` maps a UI page's name to its URL.
    """
    return MonitoringVerdict(
        project=project,
        batch_id=batch_id,
        checked_at=checked_at.isoformat(timespec="seconds"),
        model_version=model_version,
        reference=reference,
        rows=rows,
        drift=drift,
        prediction_drift=prediction_drift,
        performance=performance,
        labelled_rows_kept=labelled_rows,
        report_path=str(report_path),
        evidently_run=evidently_run,
        estimated_performance=estimation or {},
        rolled_back=rolled_back,
        reason=reason,
        links=dict(links or {}),
    )


def record_result(monitoring_dir: Path, verdict: MonitoringVerdict) -> Path:
    """Keep the verdict as ``latest.json`` and append it to ``history.jsonl``."""
    folder = monitoring_dir / verdict.project
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(verdict.to_dict(), default=str)
    append_jsonl(folder / "history.jsonl", json.loads(text))
    latest = folder / "latest.json"
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(latest)
    return latest


def read_history(monitoring_dir: Path, project: str) -> list[dict[str, Any]]:
    """Every recorded verdict, oldest first (a torn last line is skipped, not fatal)."""
    path = monitoring_dir / project / "history.jsonl"
    if not path.is_file():
        return []
    verdicts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            verdicts.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return verdicts
