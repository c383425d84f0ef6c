"""The scoring flow: validate -> score with the champion (and, when asked, each row's
strongest reasons) -> log predictions.

With several workers the batch is scored in partitions, one task each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import State

from flows.naming import run_name, untagged_tasks
from flows.states import quarantined
from loopml.data import batch_id as batch_id_of
from loopml.data import check_output_path
from loopml.errors import ValidationFailed
from loopml.runtime import open_runtime
from tasks.parallel import parallel_workers, score_in_partitions
from tasks.scoring import load_champion, load_reasons_background, score_file
from tasks.validation import validate_file


@flow(name="score", flow_run_name=run_name("score"), log_prints=False)
@untagged_tasks
def score_flow(
    project: str,
    data: str,
    out: str | None = None,
    project_dir: str = ".",
    reasons: int | None = None,
) -> dict[str, Any] | State:
    """Score the batch ``data`` (CSV/Parquet) with ``models:/project@champion``; with
    ``reasons``, each output row also gets its ``reasons`` strongest contributions. A batch
    that fails validation is quarantined and the run ends ``Quarantined`` (calling the flow
    raises ValidationFailed)."""
    out_path = None if out is None else Path(out)
    check_output_path(out_path)  # before the champion is loaded or a row is validated
    runtime = open_runtime(project, project_dir)
    source = Path(data)
    batch_id = batch_id_of(source)
    serving = load_champion(runtime)
    try:
        validate_file(runtime, source, batch_id=batch_id, require_target=False)
    except ValidationFailed as error:
        return quarantined(error)  # the inbox files the batch under quarantined/
    background = None if reasons is None else load_reasons_background(runtime, serving)
    score_batch = score_in_partitions if parallel_workers(runtime.settings) > 1 else score_file
    return score_batch(
        runtime,
        serving,
        source,
        batch_id=batch_id,
        out=out_path,
        reasons=reasons,
        background=background,
    )
