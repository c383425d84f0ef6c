"""The monitoring flow: drift, prediction drift and performance of a batch vs. the champion."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.naming import run_name, untagged_tasks
from loopml.data import batch_id as batch_id_of
from loopml.runtime import open_runtime
from tasks.estimation import estimate_performance, estimation_fields, watch_stream
from tasks.monitoring import (
    TARGET,
    check_drift,
    check_performance,
    check_predictions,
    evidently_report,
    keep_labelled_batch,
    load_reference,
    publish_verdict,
    publish_verdict_artifact,
    report_location,
)
from tasks.retraining import rollback_if_worse
from tasks.scoring import load_champion


@flow(name="monitor", flow_run_name=run_name("monitor"), log_prints=False)
@untagged_tasks
def monitor_flow(
    project: str,
    data: str,
    reference: str | None = None,
    project_dir: str = ".",
    batch_id: str | None = None,
    checked_at: datetime | None = None,
) -> dict[str, Any]:
    """Compare the batch ``data`` with the champion's training data (or ``reference``).

    ``checked_at`` (default: the run's scheduled start) stamps the verdict and its report.
    """
    runtime = open_runtime(project, project_dir)
    source = Path(data)
    batch_id = batch_id or batch_id_of(source)
    checked_at = checked_at or flow_run.scheduled_start_time
    serving = load_champion(runtime)
    baseline = load_reference(runtime, serving, reference)
    drift, current_sample, rows = check_drift(runtime, baseline, source)
    prediction_drift, reference_predictions, current_predictions, current_outputs = (
        check_predictions(runtime, serving, baseline, current_sample)
    )
    performance = check_performance(
        runtime, baseline, current_sample, current_predictions, batch_id
    )
    estimated = estimate_performance(
        runtime,
        serving,
        baseline.metrics,
        current_sample,
        batch_id,
        checked_at.isoformat(timespec="seconds"),
        performance,
        outputs=current_outputs,
    )
    stream = watch_stream(
        runtime, drift, estimated, batch_id, serving.version, baseline.profile.n_rows
    )
    labelled_rows = keep_labelled_batch(runtime, current_sample, batch_id)
    rolled_back = None
    if labelled_rows:
        rolled_back = rollback_if_worse(
            runtime, current_sample.rename(columns={TARGET: runtime.config.target}), batch_id
        )
    report_path = report_location(runtime, batch_id, checked_at.strftime("%Y%m%dT%H%M%S"))
    result = publish_verdict(
        runtime,
        batch_id=batch_id,
        checked_at=checked_at,
        model_version=serving.version,
        reference=baseline.source,
        rows=rows,
        drift=drift,
        prediction_drift=prediction_drift,
        performance=performance,
        labelled_rows=labelled_rows,
        report_path=report_path,
        evidently_run=None,
        reference_data=baseline,
        estimation=estimation_fields(estimated, stream),
        rolled_back=rolled_back,
    )
    # The verdict and its events are out; the report (seconds, on a sample) follows.
    report = evidently_report(
        runtime,
        baseline,
        current_sample,
        reference_predictions,
        current_predictions,
        batch_id,
        report_path,
        serving=serving,
        drift=drift,
        performance=performance,
        verdict=result,
        estimated=estimated,
    )
    result = {
        **result,
        "evidently_run": report.run_id,
        "links": {**result["links"], **report.links},
    }
    publish_verdict_artifact(runtime, result)
    return result
