"""Late labels: store them, then judge each model version on its labelled predictions."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import events, monitoring
from loopml.labels import (
    LabelStore,
    joined_predictions,
    known_classes,
    parse_labels,
    performance_by_version,
)
from loopml.registry import CHAMPION, version_by_alias, version_metrics
from loopml.runtime import Runtime
from loopml.scoring import BATCH_ID, ROW_ID, PredictionLog
from loopml.validation import load_suite
from tasks.artifacts import artifact_key
from tasks.events import emit


@task(name="attach-labels", cache_policy=NO_CACHE)
def attach_labels(runtime: Runtime, frame: pd.DataFrame) -> pd.DataFrame:
    """Check the labels against the prediction log and store them (all or nothing)."""
    log = PredictionLog(runtime.settings.predictions_dir, runtime.name)
    known = set(log.read(columns=[ROW_ID])[ROW_ID].astype(str))
    suite = load_suite(runtime.suite_path) if runtime.suite_path.is_file() else None
    classes = known_classes(runtime.config, suite)
    labels = parse_labels(frame, runtime.config, known, classes)
    LabelStore(runtime.settings.labels_dir, runtime.name).add_labels(labels)
    get_run_logger().info("stored %d labels", len(labels))
    return labels


@task(name="labelled-performance", cache_policy=NO_CACHE)
def judge_labelled_performance(
    runtime: Runtime, new_labels: pd.DataFrame, labels_id: str
) -> dict[str, Any]:
    """Performance per model version over all labelled predictions; the champion's rows
    labelled just now are judged against its held-out metrics (and may emit an event)."""
    config = runtime.config
    joined = joined_predictions(
        PredictionLog(runtime.settings.predictions_dir, runtime.name),
        LabelStore(runtime.settings.labels_dir, runtime.name),
    )

    def metrics_fn(truth, predicted, probability):
        return monitoring.batch_metrics(
            monitoring.batch_outcomes(config, truth.to_numpy(), predicted.to_numpy(), probability)
        )

    by_version = performance_by_version(joined, config, metrics_fn)
    create_table_artifact(
        key=artifact_key(config.name, "performance-by-version"),
        table=[
            {"version": version, "rows": entry["rows"], **entry["metrics"]}
            for version, entry in sorted(by_version.items())
        ],
        description=f"{config.name}: performance of each version on labelled predictions",
    )
    verdict = None
    champion = version_by_alias(runtime.mlflow, config.name, CHAMPION)
    fresh = joined[joined[ROW_ID].isin(set(new_labels[ROW_ID]))] if not joined.empty else joined
    if champion is not None and not fresh.empty:
        fresh = fresh[fresh["model_version"].astype(str) == str(champion.version)]
        if not fresh.empty:
            verdict = monitoring.judge_performance(
                config,
                version_metrics(champion),
                fresh["target"].to_numpy(),
                fresh["prediction"].to_numpy(),
                _probability(fresh),
            )
            current = verdict["current"]
            if verdict["degraded"]:
                batches = sorted(set(fresh[BATCH_ID]))
                emit(
                    config.name,
                    events.PERFORMANCE_DEGRADED,
                    {
                        "batch_id": labels_id,
                        "scored_batches": batches,
                        "model_version": str(champion.version),
                        "metric": verdict["metric"],
                        "drop": verdict["drop"],
                        "current": current.get(verdict["metric"]),
                    },
                )
                from tasks.retraining import announce_new_evidence

                announce_new_evidence(runtime, labels_id)
    return {"performance_by_version": by_version, "champion_verdict": verdict}


def _probability(rows: pd.DataFrame):
    return rows["probability"].to_numpy() if "probability" in rows else None
