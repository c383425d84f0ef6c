"""Reading batches from where users keep them (files, SQL)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml.data import file_hash, frame_hash, read_table
from loopml.errors import LoopmlError


def transient(task, task_run, state) -> bool:
    """Retry I/O or server hiccups, not a failure loopml explains (bad table, no champion)."""
    return not isinstance(state.result(raise_on_failure=False), LoopmlError)


@task(
    name="load-table",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def load_table(path: str, sql_url: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read a table and return it with its batch id (a content hash: same bytes, same id)."""
    frame = read_table(path, sql_url=sql_url)
    batch_id = "b" + (frame_hash(frame) if sql_url else file_hash(Path(path)))
    get_run_logger().info("read %d rows x %d columns from %s", *frame.shape, path)
    return frame, batch_id
