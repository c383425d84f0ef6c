"""Validate a batch against the project's Great Expectations suite; quarantine it on failure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import events
from loopml.data import iter_table_chunks
from loopml.errors import DataError, ValidationFailed
from loopml.runtime import Runtime
from loopml.validation import (
    ValidationReport,
    describe_failures,
    load_suite,
    quarantine_batch,
    validate_frame,
)
from tasks.artifacts import artifact_key
from tasks.events import emit

CHUNK_ROWS = 250_000


@task(name="validate", cache_policy=NO_CACHE)
def validate_batch(
    runtime: Runtime,
    frame: pd.DataFrame,
    *,
    source: Path | None,
    batch_id: str,
    require_target: bool,
    require_id: bool = True,
) -> ValidationReport:
    """Run the suite on a batch in memory; on failure quarantine it and raise.

    ``require_id=False`` for tables loopml assembles itself (the retraining set keeps features
    and target only), where the id column's absence says nothing about the data.

    Raises:
        ValidationFailed: carrying the report and the quarantine folder.
    """
    report = validate_frame(
        frame,
        load_suite(runtime.suite_path),
        require_target=require_target,
        require_id=require_id,
        data_docs_dir=runtime.settings.data_docs_dir / runtime.name,
    )
    return _conclude(runtime, report, source if source is not None else frame, batch_id, len(frame))


@task(name="validate-file", cache_policy=NO_CACHE)
def validate_file(
    runtime: Runtime, source: Path, *, batch_id: str, require_target: bool
) -> ValidationReport:
    """Run the suite over a file chunk by chunk (memory stays flat); quarantine on failure.

    Raises:
        DataError: the file has no rows.
        ValidationFailed: a chunk failed; the whole file is quarantined.
    """
    suite = load_suite(runtime.suite_path)
    rows = 0
    report = None
    for chunk in iter_table_chunks(source, CHUNK_ROWS):
        if chunk.empty:
            continue
        report = validate_frame(
            chunk,
            suite,
            require_target=require_target,
            data_docs_dir=runtime.settings.data_docs_dir / runtime.name,
        )
        rows += len(chunk)
        if not report.success:
            break
    if report is None:
        raise DataError(f"{source}: the batch has no rows")
    return _conclude(runtime, report, source, batch_id, rows)


def _conclude(
    runtime: Runtime,
    report: ValidationReport,
    source: Path | pd.DataFrame,
    batch_id: str,
    rows: int,
) -> ValidationReport:
    logger = get_run_logger()
    if report.success:
        logger.info("batch %s passed %d expectations", batch_id, report.evaluated)
        emit(
            runtime.name,
            events.DATA_VALIDATED,
            {"batch_id": batch_id, "rows": rows, "expectations": report.evaluated},
        )
        return report
    lines = describe_failures(report)
    folder = quarantine_batch(
        source, report, runtime.settings.quarantine_dir / runtime.name, batch_id
    )
    for line in lines:
        logger.error(line)
    create_markdown_artifact(
        key=artifact_key(runtime.name, "quarantine"),
        markdown=_quarantine_markdown(batch_id, folder, lines),
        description=f"Batch {batch_id} quarantined",
    )
    emit(
        runtime.name,
        events.DATA_QUARANTINED,
        {
            "batch_id": batch_id,
            "rows": rows,
            "failed_expectations": len(report.failures),
            "failures": lines[:20],
            "quarantine_path": str(folder),
        },
    )
    raise ValidationFailed(
        f"batch {batch_id} failed {len(report.failures)} of {report.evaluated} expectations "
        f"and was quarantined in {folder}: " + "; ".join(lines[:3]),
        report,
        str(folder),
    )


def _quarantine_markdown(batch_id: str, folder: Path, lines: list[str]) -> str:
    body = "\n".join(f"- {line}" for line in lines)
    return f"# Batch `{batch_id}` quarantined\n\nCopied untouched to `{folder}`.\n\n{body}\n"
