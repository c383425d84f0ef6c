"""The labelling flow: late ground truth joined to logged predictions, performance per version."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.naming import run_name, untagged_tasks
from loopml.runtime import open_runtime
from tasks.estimation import record_realised
from tasks.ingest import load_table
from tasks.labels import attach_labels, judge_labelled_performance
from tasks.retraining import rollback_on_new_labels


@flow(name="label", flow_run_name=run_name("label"), log_prints=False)
@untagged_tasks
def label_flow(project: str, data: str, project_dir: str = ".") -> dict[str, Any]:
    """Store labels for scored rows; report performance per model version."""
    runtime = open_runtime(project, project_dir)
    frame, labels_id = load_table(data)
    stored = attach_labels(runtime, frame)
    performance = judge_labelled_performance(runtime, stored, labels_id)
    record_realised(runtime)
    rolled_back = rollback_on_new_labels(runtime, stored, labels_id)
    return {
        "project": project,
        "labels_id": labels_id,
        "labels": len(stored),
        **performance,
        "rolled_back": rolled_back,
    }
