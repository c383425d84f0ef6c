"""Batch scoring with the champion, logged for monitoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import explain, scoring
from loopml.registry import download_reference, require_champion
from loopml.runtime import Runtime
from loopml.scoring import PredictionLog
from tasks.artifacts import artifact_key
from tasks.ingest import transient
from tasks.models import load_checked

CHUNK_ROWS = 100_000


@dataclass
class ServingModel:
    """The champion as loaded for scoring."""

    model: Any
    version: str


@task(
    name="load-champion",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def load_champion(runtime: Runtime) -> ServingModel:
    """``models:/NAME@champion`` resolved to its version, so every row names the version used.

    The artifact is checked at every load; a process that serves many batches (the inbox
    runner, the warm process) deserialises each checked file once (``registry.load_version``).
    """
    champion = require_champion(runtime.mlflow, runtime.name)
    model = load_checked(runtime, champion)
    get_run_logger().info("scoring with %s v%s", runtime.name, champion.version)
    return ServingModel(model, str(champion.version))


@task(
    name="load-reasons-background",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def load_reasons_background(runtime: Runtime, serving: ServingModel) -> pd.DataFrame:
    """The background rows of ``score --reasons``: a sample of the serving version's training
    data, the reference ``loopml explain`` explains against."""
    champion = runtime.mlflow.get_model_version(runtime.name, serving.version)
    path = download_reference(
        runtime.mlflow,
        champion.run_id,
        "train.parquet",
        runtime.settings.references_dir / runtime.name,
    )
    return explain.background_sample(pd.read_parquet(path))


@task(name="score-file", cache_policy=NO_CACHE)
def score_file(
    runtime: Runtime,
    serving: ServingModel,
    source: Path,
    *,
    batch_id: str,
    out: Path | None,
    chunk_rows: int = CHUNK_ROWS,
    reasons: int | None = None,
    background: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score ``source`` chunk by chunk into ``out`` and the prediction log (once per batch);
    with ``reasons``, each output row also gets its strongest reasons against ``background``."""
    logger = get_run_logger()
    log = PredictionLog(runtime.settings.predictions_dir, runtime.name)
    already_logged = log.has_batch(batch_id)
    if already_logged:
        logger.info("batch %s is in the prediction log already: not logged twice", batch_id)
    rows = scoring.score_file(
        serving.model,
        source,
        runtime.config,
        batch_id=batch_id,
        model_version=serving.version,
        out=out,
        log=None if already_logged else log,
        chunk_rows=chunk_rows,
        on_chunk=lambda scored: logger.info("scored %d rows", scored),
        reasons=reasons,
        background=background,
    )
    return publish_scoring(
        runtime,
        serving,
        batch_id=batch_id,
        rows=rows,
        out=out,
        logged=not already_logged,
        reasons=reasons,
    )


def publish_scoring(
    runtime: Runtime,
    serving: ServingModel,
    *,
    batch_id: str,
    rows: int,
    out: Path | None,
    logged: bool,
    reasons: int | None = None,
) -> dict[str, Any]:
    """The scoring artifact of a batch, and the flow's result.

    ``reasons`` in the result is the number of reasons each row got (``None``: not asked for).
    """
    written = scoring.reasons_written(reasons, runtime.config)
    create_markdown_artifact(
        key=artifact_key(runtime.name, "scoring"),
        markdown=(
            f"# Scored batch `{batch_id}`\n\n{rows} rows with {runtime.name} v{serving.version}"
            f"{'' if written is None else f', {written} reasons per row'}"
            f"{'' if out is None else f' -> `{out}`'}\n"
        ),
        description=f"{runtime.name}: {rows} rows scored",
    )
    return {
        "project": runtime.name,
        "batch_id": batch_id,
        "rows": rows,
        "model_version": serving.version,
        "out": None if out is None else str(out),
        "logged": logged,
        "reasons": written,
    }
