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

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml.data import CSV_SUFFIXES, PARQUET_SUFFIXES, file_hash
from loopml.errors import ValidationFailed
from loopml.settings import load_settings
from tasks.artifacts import artifact_key, markdown_table

TABLE_SUFFIXES = CSV_SUFFIXES | PARQUET_SUFFIXES
PARTIAL_SUFFIXES = {".part", ".tmp", ".partial", ".crdownload"}
PROCESSED = "processed"
QUARANTINED = "quarantined"
FAILED = "failed"
STATE_FILE = "inbox.jsonl"
MAX_ATTEMPTS = 3  # an unexpected error is retried on later polls, then the file moves to failed/


# --------------------------------------------------------------------------- file handling


def ready_files(folder: Path, settle_seconds: float, now: float | None = None) -> list[Path]:
    """Table files in ``folder`` (not its subfolders) that are complete, oldest first.

    Hidden files, partial-download suffixes and files modified in the last ``settle_seconds``
    are left for a later poll.
    """
    now = time.time() if now is None else now
    candidates = []
    for path in folder.iterdir() if folder.is_dir() else ():
        if not path.is_file() or path.name.startswith(".") or not _is_table(path):
            continue
        stat = path.stat()
        if stat.st_size == 0 or now - stat.st_mtime < settle_seconds:
            continue
        candidates.append((stat.st_mtime, path.name, path))
    return [path for _, _, path in sorted(candidates)]


def _is_table(path: Path) -> bool:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in PARTIAL_SUFFIXES:
        return False
    if suffixes[-1:] in ([".gz"], [".zip"]):
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in TABLE_SUFFIXES


def move_aside(path: Path, folder: Path, batch_id: str) -> Path:
    """Move ``path`` into ``folder`` without overwriting anything already there."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{batch_id}{path.suffix}"
    counter = 1
    while target.exists():
        target = folder / f"{path.stem}.{batch_id}.{counter}{path.suffix}"
        counter += 1
    return path.rename(target)


def read_state(folder: Path) -> dict[str, dict[str, Any]]:
    """The last recorded outcome per content hash (``batch_id``)."""
    state: dict[str, dict[str, Any]] = {}
    path = folder / STATE_FILE
    if not path.is_file():
        return state
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            state[entry["batch_id"]] = entry
    return state


def record_outcome(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
    record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    with open(folder / STATE_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
    return record


@contextlib.contextmanager
def inbox_lock(folder: Path) -> Iterator[bool]:
    """Yield True when this run holds the project's inbox (False: another run is busy)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- tasks


@task(name="list-inbox", cache_policy=NO_CACHE)
def list_ready_files(folder: Path, settle_seconds: float) -> list[Path]:
    files = ready_files(folder, settle_seconds)
    get_run_logger().info("%d file(s) ready in %s", len(files), folder)
    return files


@task(name="fingerprint", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def fingerprint(path: Path) -> str:
    """The batch id every flow uses for this file: ``b`` + its content hash."""
    return "b" + file_hash(path)


@task(name="file-away", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def file_away(folder: Path, path: Path, outcome: dict[str, Any], subfolder: str) -> dict[str, Any]:
    """Move the file to ``subfolder`` and remember its outcome (the move comes last: a crash
    before it means the file is seen again, and the content hash then says what to do)."""
    moved = move_aside(path, folder / subfolder, outcome["batch_id"])
    return record_outcome(folder, {**outcome, "moved_to": str(moved)})


@task(name="champion-check", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def has_champion(project: str, project_dir: str) -> bool:
    """Whether there is a champion to score with (without one, batches wait in the inbox)."""
    from loopml.registry import CHAMPION, version_by_alias
    from loopml.runtime import open_runtime

    runtime = open_runtime(project, project_dir)
    return version_by_alias(runtime.mlflow, project, CHAMPION) is not None


# --------------------------------------------------------------------------- the flow


@flow(name="inbox", log_prints=False)
def inbox_flow(project: str, project_dir: str = ".", settle_seconds: float = 2.0) -> dict[str, Any]:
    """Score and monitor every complete new batch in ``inbox/PROJECT/``, oldest first."""
    logger = get_run_logger()
    folder = load_settings().inbox_dir / project
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
        if batches and not has_champion(project, project_dir):
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
