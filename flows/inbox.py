"""The inbox flow: new batches dropped into ``$LOOPML_HOME/inbox/NAME/`` are scored and monitored.

Drop convention: write the file under a name the inbox ignores (a leading ``.`` or a ``.part`` /
``.tmp`` suffix), then rename it to ``*.csv`` / ``*.parquet`` in the same folder. A rename is
atomic, so the inbox never sees half a file. A file written in place is still safe: it is only
taken once it has not changed for ``settle_seconds``.

Each file, oldest first: score it (the scoring flow validates it first), monitor it, then move
it to ``processed/``; a batch that fails validation goes to ``quarantined/`` (its copy and report
are already in ``$LOOPML_HOME/quarantine`` by then). A file whose bytes were processed before is
not processed again (``inbox.jsonl`` remembers content hashes); it is moved aside as a duplicate.
Nothing is ever deleted.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from flows.naming import project_tags, run_name, untagged_tasks
from loopml.errors import ValidationFailed
from loopml.inbox import (
    FAILED,
    MAX_ATTEMPTS,
    PROCESSED,
    QUARANTINED,
    inbox_lock,
    read_state,
    record_outcome,
)
from loopml.settings import load_settings
from tasks.artifacts import artifact_key, markdown_table
from tasks.inbox import file_away, fingerprint, has_champion, list_ready_files


@flow(name="inbox", flow_run_name=run_name("inbox"), log_prints=False)
@untagged_tasks
def inbox_flow(project: str, project_dir: str = ".", settle_seconds: float = 2.0) -> dict[str, Any]:
    """Score and monitor every complete new batch in ``inbox/PROJECT/``, oldest first."""
    logger = get_run_logger()
    settings = load_settings()  # this flow run's entry point (a deployment run has only its env)
    folder = settings.inbox_dir / project
    summary: dict[str, Any] = {"project": project, "inbox": str(folder), "files": []}
    with inbox_lock(folder) as holding:
        if not holding:
            logger.info("another inbox run is processing %s: nothing to do", folder)
            return {**summary, "busy": True}
        seen = read_state(folder)
        batches = []
        for path in list_ready_files(folder, settle_seconds):
            batch_id = fingerprint(path)
            done = seen.get(batch_id, {}).get("status") in (PROCESSED, QUARANTINED)
            if done or batch_id in {known for _, known in batches}:
                logger.info("%s: batch %s was seen before; not again", path.name, batch_id)
                entry = {"file": path.name, "batch_id": batch_id, "status": "duplicate"}
                summary["files"].append(file_away(folder, path, entry, PROCESSED))
            else:
                batches.append((path, batch_id))
        if batches and not has_champion(settings, project, project_dir):
            logger.warning("%s has no champion model yet: %d file(s) wait", project, len(batches))
            summary["waiting"] = len(batches)
            batches = []
        if batches:
            # Imported only when there is work: an empty poll every few seconds stays cheap.
            from flows.monitoring import monitor_flow
            from flows.scoring import score_flow

            for path, batch_id in batches:
                attempts = int(seen.get(batch_id, {}).get("attempts", 0)) + 1
                outcome = _process(
                    project, project_dir, folder, path, batch_id, attempts, score_flow, monitor_flow
                )
                summary["files"].append(outcome)
    for status in (PROCESSED, QUARANTINED, "duplicate", FAILED, "retry"):
        summary[status] = sum(1 for entry in summary["files"] if entry["status"] == status)
    if summary["files"]:
        create_markdown_artifact(
            key=artifact_key(project, "inbox"),
            markdown=_summary_markdown(summary),
            description=f"{project}: {len(summary['files'])} inbox file(s)",
        )
    return summary


def _process(
    project, project_dir, folder, path, batch_id, attempts, score_flow, monitor_flow
) -> dict[str, Any]:
    """One file through scoring (validation first) and monitoring; returns its outcome."""
    logger = get_run_logger()
    outcome: dict[str, Any] = {"file": path.name, "batch_id": batch_id}
    try:
        with project_tags(project):  # a deployment's tags do not pass to its subflows
            scored = score_flow(project=project, data=str(path), project_dir=project_dir)
            monitored = monitor_flow(
                project=project, data=str(path), project_dir=project_dir, batch_id=batch_id
            )
    except ValidationFailed as exc:
        logger.warning("%s: quarantined: %s", path.name, exc)
        quarantine = getattr(exc, "quarantine_path", None)
        entry = {**outcome, "status": QUARANTINED, "quarantine": quarantine, "reason": str(exc)}
        return file_away(folder, path, entry, QUARANTINED)
    except Exception as exc:  # noqa: BLE001 - any other failure: keep the file, retry, then park it
        if attempts >= MAX_ATTEMPTS:
            logger.error("%s: failed %d times, moved to %s/: %s", path.name, attempts, FAILED, exc)
            entry = {**outcome, "status": FAILED, "attempts": attempts, "reason": str(exc)}
            return file_away(folder, path, entry, FAILED)
        logger.error("%s: attempt %d failed (kept for the next poll): %s", path.name, attempts, exc)
        return record_outcome(
            folder, {**outcome, "status": "retry", "attempts": attempts, "reason": str(exc)}
        )
    entry = {
        **outcome,
        "status": PROCESSED,
        "rows": scored.get("rows"),
        "model_version": scored.get("model_version"),
        "predictions": scored.get("out"),
        "drift_detected": monitored.get("drift_detected"),
        "drift_share": monitored.get("drift_share"),
        "performance_degraded": monitored.get("performance_degraded"),
        "report": monitored.get("report_path"),
    }
    logger.info(
        "%s: %s rows scored with v%s; drift %s (share %.2f)",
        path.name,
        entry["rows"],
        entry["model_version"],
        entry["drift_detected"],
        entry["drift_share"] or 0.0,
    )
    return file_away(folder, path, entry, PROCESSED)


def _summary_markdown(summary: dict[str, Any]) -> str:
    rows = [
        {
            "file": entry["file"],
            "batch": entry["batch_id"],
            "status": entry["status"],
            "rows": entry.get("rows", ""),
            "drift": entry.get("drift_detected", ""),
            "drift share": entry.get("drift_share", ""),
        }
        for entry in summary["files"]
    ]
    return f"# Inbox `{summary['project']}`\n\n{markdown_table(rows)}\n"


if __name__ == "__main__":  # pragma: no cover - `python -m flows.inbox NAME` for a one-off poll
    import sys

    print(json.dumps(inbox_flow(sys.argv[1], os.getcwd()), default=str))
