"""Tasks of the inbox flow: list ready files, fingerprint one, file it away, check a champion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml.data import batch_id
from loopml.inbox import move_aside, ready_files, record_outcome
from loopml.settings import Settings


@task(name="list-inbox", cache_policy=NO_CACHE)
def list_ready_files(folder: Path, settle_seconds: float) -> list[Path]:
    files = ready_files(folder, settle_seconds)
    get_run_logger().info("%d file(s) ready in %s", len(files), folder)
    return files


@task(name="fingerprint", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def fingerprint(path: Path) -> str:
    """The batch id every flow uses for this file: ``b`` + its content hash."""
    return batch_id(path)


@task(name="file-away", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def file_away(folder: Path, path: Path, outcome: dict[str, Any], subfolder: str) -> dict[str, Any]:
    """Move the file to ``subfolder`` and remember its outcome (the move comes last: a crash
    before it means the file is seen again, and the content hash then says what to do)."""
    moved = move_aside(path, folder / subfolder, outcome["batch_id"])
    return record_outcome(folder, {**outcome, "moved_to": str(moved)})


@task(name="champion-check", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def has_champion(settings: Settings, project: str, project_dir: str) -> bool:
    """Whether there is a champion to score with (without one, batches wait in the inbox)."""
    from loopml.registry import CHAMPION, version_by_alias
    from loopml.runtime import open_runtime

    runtime = open_runtime(project, project_dir, settings)
    return version_by_alias(runtime.mlflow, project, CHAMPION) is not None
