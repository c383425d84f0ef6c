"""The validation flow: one batch against the project's suite (quarantined on failure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import State

from flows.naming import run_name, untagged_tasks
from flows.states import quarantined
from loopml.errors import ValidationFailed
from loopml.runtime import open_runtime
from tasks.ingest import load_table
from tasks.validation import validate_batch


@flow(name="validate", flow_run_name=run_name("validate"), log_prints=False)
@untagged_tasks
def validate_flow(
    project: str, data: str, project_dir: str = ".", require_target: bool | None = None
) -> dict[str, Any] | State:
    """Validate ``data``; a failing batch is quarantined and the run ends ``Quarantined``
    (calling the flow raises ValidationFailed)."""
    runtime = open_runtime(project, project_dir)
    frame, batch_id = load_table(data)
    with_target = (
        runtime.config.target in frame.columns if require_target is None else require_target
    )
    try:
        report = validate_batch(
            runtime, frame, source=Path(data), batch_id=batch_id, require_target=with_target
        )
    except ValidationFailed as error:
        return quarantined(error)
    return {
        "project": project,
        "batch_id": batch_id,
        "success": report.success,
        "rows": len(frame),
        "evaluated": report.evaluated,
        "data_docs": str(report.data_docs_path) if report.data_docs_path else None,
    }
