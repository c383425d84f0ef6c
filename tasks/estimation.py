"""Estimated performance without labels and the stream-level detector: Prefect wrappers over
loopml.estimation and loopml.stream."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import monitoring, stream
from loopml.estimation.estimator import EstimationError
from loopml.estimation.fit import fit_estimator
from loopml.estimation.outputs import ModelOutputs, model_outputs
from loopml.estimation.store import EstimateStore, estimate_record, realised_record
from loopml.estimation.verdict import estimated_verdict, flat_estimates
from loopml.estimation.versions import load_version_estimator, store_estimator
from loopml.features import prepare_features, prepare_target
from loopml.gate import improvement
from loopml.labels import LabelStore, joined_predictions
from loopml.registry import RegisteredVersion
from loopml.runtime import Runtime
from loopml.scoring import BATCH_ID, PredictionLog
from tasks.ingest import transient


@task(
    name="record-estimator",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def record_estimator(
    runtime: Runtime,
    registered: RegisteredVersion,
    model: Any,
    test: pd.DataFrame,
    test_metrics: dict[str, float],
) -> str | None:
    """Fit CBPE / DLE on the held-out rows and store it with the new version (None: not fitted).

    A failure here never fails the training: the version simply carries no estimator.
    """
    config = runtime.config
    logger = get_run_logger()
    features = prepare_features(test, config)
    try:
        outputs = model_outputs(model, features, config)
        estimator = fit_estimator(
            config, outputs, prepare_target(test, config), features, test_metrics
        )
    except EstimationError as exc:
        logger.warning("no performance estimator for v%s: %s", registered.version, exc)
        return None
    store_estimator(runtime.mlflow, config.name, registered.version, registered.run_id, estimator)
    logger.info(
        "%s estimator stored with v%s (estimate on its %d held-out rows: %s)",
        estimator.method,
        registered.version,
        estimator.rows,
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(estimator.reference_estimated.items())),
    )
    return estimator.method


@task(name="estimate-performance", cache_policy=NO_CACHE)
def estimate_performance(
    runtime: Runtime,
    serving: Any,
    reference_metrics: dict[str, float],
    current_sample: pd.DataFrame,
    batch_id: str,
    checked_at: str,
    labelled_performance: dict[str, Any] | None,
    *,
    outputs: ModelOutputs | None = None,
) -> dict[str, Any]:
    """The champion's estimated performance on the batch, kept beside the realised one.

    ``outputs``: the champion's outputs on ``current_sample`` when the caller has them.
    """
    config = runtime.config
    metric = config.performance_metric
    version = runtime.mlflow.get_model_version(runtime.name, serving.version)
    estimator = load_version_estimator(
        runtime.mlflow, version, runtime.settings.references_dir / runtime.name
    )
    if estimator is None:
        note = f"no estimator recorded for v{serving.version}"
        get_run_logger().info(note)
        return {"metric": metric, "estimates": {}, "degraded": False, "note": note}
    features = current_sample[config.columns.features]
    if outputs is None:
        outputs = model_outputs(serving.model, features, config)
    policy = config.monitoring.performance
    estimates = estimator.estimate(
        outputs, features, metric=metric, one_sided_alpha=policy.alpha or 0.05
    )
    verdict = estimated_verdict(
        estimates,
        reference_metrics,
        metric=metric,
        max_drop=policy.max_drop,
        method=estimator.method,
        rows=len(features),
        min_rows=policy.min_labelled_rows,
    )
    verdict["baseline"] = estimator.reference_estimated.get(metric)
    store = EstimateStore(runtime.settings.monitoring_dir, runtime.name)
    store.add(estimate_record(batch_id, serving.version, verdict, checked_at))
    if labelled_performance and labelled_performance.get("current"):
        store.add(
            realised_record(
                batch_id,
                labelled_performance["current"],
                labelled_performance["rows"],
                checked_at,
            )
        )
    entry = estimates.get(metric) or {}
    if entry.get("value") is not None:
        get_run_logger().info(
            "estimated %s (%s): %.4f [%s, %s]",
            metric,
            estimator.method,
            entry["value"],
            _text(entry.get("lower")),
            _text(entry.get("upper")),
        )
    return verdict


@task(name="stream-detector", cache_policy=NO_CACHE)
def watch_stream(
    runtime: Runtime,
    drift: dict[str, Any],
    estimated: dict[str, Any],
    batch_id: str,
    model_version: str,
    reference_rows: int,
) -> dict[str, Any] | None:
    """Add the batch to the project's CUSUM streams (state under LOOPML_HOME).

    Returns the stream verdict, or None when the detector is off or the batch had no verdict.
    """
    policy = runtime.config.monitoring.stream
    if not policy.enabled or drift.get("status") == "insufficient_data":
        return None
    observations = stream.column_observations(
        drift.get("columns") or {},
        batch_rows=drift.get("n_rows") or 0,
        reference_rows=reference_rows,
    )
    metric = estimated.get("metric")
    entry = (estimated.get("estimates") or {}).get(metric) or {}
    if entry.get("value") is not None and estimated.get("baseline") is not None:
        drop = -improvement(entry["value"], estimated["baseline"], metric)
        z = stream.performance_observation(drop, entry.get("standard_error"))
        if z is not None:
            observations[stream.PERFORMANCE_STREAM] = z
    path = runtime.settings.monitoring_dir / runtime.name / "stream.json"
    state, verdict = stream.update_stream(
        stream.StreamState.load(path),
        observations,
        batch_id=batch_id,
        model_version=str(model_version),
        arl0=policy.arl0,
        reference_value=policy.reference_value,
    )
    state.save(path)
    if verdict["alarm"]:
        get_run_logger().info("stream alarm: %s", ", ".join(verdict["alarmed_streams"]))
    return verdict


@task(name="realised-vs-estimated", cache_policy=NO_CACHE)
def record_realised(runtime: Runtime) -> int:
    """Realised metrics of every estimated batch that now has labels; returns batches updated."""
    config = runtime.config
    at = datetime.now(UTC).isoformat(timespec="seconds")
    store = EstimateStore(runtime.settings.monitoring_dir, runtime.name)
    batches = store.estimated_batches()
    if not batches:
        return 0
    joined = joined_predictions(
        PredictionLog(runtime.settings.predictions_dir, runtime.name),
        LabelStore(runtime.settings.labels_dir, runtime.name),
    )
    if joined.empty:
        return 0
    updated = 0
    for batch_id, rows in joined[joined[BATCH_ID].isin(batches)].groupby(BATCH_ID):
        probability = rows["probability"].to_numpy() if "probability" in rows else None
        outcomes = monitoring.batch_outcomes(
            config, rows["target"].to_numpy(), rows["prediction"].to_numpy(), probability
        )
        metrics = monitoring.batch_metrics(outcomes)
        store.add(realised_record(str(batch_id), metrics, len(rows), at))
        updated += 1
    return updated


def estimation_fields(
    estimated: dict[str, Any] | None, stream_verdict: dict[str, Any] | None
) -> dict[str, Any]:
    """The monitoring result's estimation keys, grouped: the verdict, the flat
    ``estimated_<metric>`` keys of the user contract, and the stream verdict."""
    return {
        "estimated_performance": estimated,
        **flat_estimates(estimated),
        "estimated_degraded": bool(estimated and estimated.get("degraded")),
        "stream": stream_verdict,
    }


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
