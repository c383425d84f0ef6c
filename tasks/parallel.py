"""Work split across the flow's task runner: search shards and scoring partitions.

With more than one worker (:func:`parallel_workers`), the flows call these instead of
``tasks.training.search_models`` and ``tasks.scoring.score_file``; with one worker they are
not used and nothing changes. Submitted tasks (``.submit()``) run where the task runner puts
them: Dask worker processes, possibly on other machines. So they take plain, picklable
arguments (config, frames, URLs, paths; never the ``Runtime`` with its MLflow client), and
what they share lives in engines every worker reaches: the Optuna storage (an RDB URL:
SQLite on one machine, PostgreSQL across machines) and ``LOOPML_HOME`` (a shared file system).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from loopml.config import ProjectConfig
from loopml.data import iter_table_chunks
from loopml.features import prepare_features, prepare_target
from loopml.figures import start_render_worker
from loopml.runtime import Runtime, quiet_library_logs
from loopml.scoring import (
    PredictionLog,
    UniqueRowIds,
    check_reasons,
    now,
    score_chunk,
    write_output_chunks,
)
from loopml.search.result import SearchResult
from loopml.search.study import run_search
from loopml.settings import Settings
from tasks.ingest import transient
from tasks.scoring import CHUNK_ROWS, ServingModel, publish_scoring
from tasks.training import publish_search, search_models, trial_reporter

# Study user attribute per process that ran trials: {"host", "pid", "trials"}.
PROCESS_ATTR_PREFIX = "loopml.process."

# --------------------------------------------------------------------------- search


def parallel_workers(settings: Settings) -> int:
    """How many search shards / scoring partitions are worth running at once."""
    return settings.dask_workers if settings.dask_address else 1


def search_candidates(
    runtime: Runtime,
    train: pd.DataFrame,
    *,
    study_name: str,
    trials: int | None,
    timeout: float | None,
) -> SearchResult:
    """The model search: in shards when the settings give more than one worker, else one task.

    The one place the training and retraining flows choose between the two. The figure worker
    (:mod:`loopml.figures`) starts here too, so it is ready when the evaluation's figures come.
    """
    start_render_worker()
    workers = parallel_workers(runtime.settings)
    if workers > 1:
        return search_in_shards(
            runtime, train, study_name=study_name, trials=trials, timeout=timeout, shards=workers
        )
    return search_models(runtime, train, study_name=study_name, trials=trials, timeout=timeout)


def search_in_shards(
    runtime: Runtime,
    train: pd.DataFrame,
    *,
    study_name: str,
    trials: int | None,
    timeout: float | None,
    shards: int,
) -> SearchResult:
    """The search as ``shards`` tasks on the task runner, all working on one Optuna study.

    Every shard calls :func:`loopml.search.study.run_search` on the same storage and study with
    the same total budget: ``run_search`` tops the study up to ``trials`` finished trials, so
    the shards share the budget instead of multiplying it. The study is read back into one
    :class:`~loopml.search.result.SearchResult` at the end. A shard that fails is logged; the
    others carry on up to the budget, and the search fails only if every shard failed.

    Args:
        runtime: the project's runtime (read in the flow process only).
        train: the training rows.
        study_name: the Optuna study, shared by the shards.
        trials: total finished trials wanted (``None``: the config's).
        timeout: seconds after which no new trial starts (``None``: the config's).
        shards: how many search tasks to submit.
    """
    started = time.perf_counter()
    config = runtime.config
    storage = runtime.settings.optuna_storage
    start_search(config, train, storage=storage, study_name=study_name, timeout=timeout)
    budget = config.search.timeout_seconds if timeout is None else timeout
    remaining = None if budget is None else max(budget - (time.perf_counter() - started), 1.0)
    futures = [
        search_shard.submit(
            config,
            train,
            storage=storage,
            study_name=study_name,
            trials=trials,
            timeout=remaining,
            shard=number,
        )
        for number in range(shards)
    ]
    _completed_results(futures, "search shard")
    result = collect_search(config, train, storage=storage, study_name=study_name)
    return dataclasses.replace(result, elapsed_seconds=time.perf_counter() - started)


@task(name="search-start", cache_policy=NO_CACHE)
def start_search(
    config: ProjectConfig,
    train: pd.DataFrame,
    *,
    storage: str,
    study_name: str,
    timeout: float | None,
) -> None:
    """Create the study and run its first trial, in one process, before the shards start.

    Shards starting together on a fresh storage race to create Optuna's tables (one fails
    with a unique-constraint error) and each enqueue the families' default trials (so they
    run twice). ``run_search`` with a budget of one trial does that setup once.
    """
    logger = get_run_logger()
    quiet_library_logs()
    numbers: list[int] = []
    on_trial = _numbering_reporter(logger, config.search_metric, numbers)
    run_search(
        prepare_features(train, config),
        prepare_target(train, config),
        config,
        storage=storage,
        study_name=study_name,
        n_trials=1,
        timeout=timeout,
        on_trial=on_trial,
        ensemble=False,  # blending is the collecting step's, over every shard's trials
    )
    record_process(storage, study_name, "start", numbers)


@task(
    name="search-shard",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def search_shard(
    config: ProjectConfig,
    train: pd.DataFrame,
    *,
    storage: str,
    study_name: str,
    trials: int | None,
    timeout: float | None,
    shard: int,
) -> dict[str, Any]:
    """One worker's part of the search: trials on the shared study until the budget is met.

    Native threads are capped at one: the shards are the parallelism, and HistGradientBoosting's
    OpenMP threads on top of them oversubscribe the cores (many-fold slower). The retry covers
    a storage connection lost mid-search (not a failure loopml explains, such as bad data);
    finished trials are kept, so it only tops up.

    Returns:
        ``shard``, ``host``, ``pid`` and the ``trials`` (numbers) this process finished.
    """
    logger = get_run_logger()
    quiet_library_logs()
    numbers: list[int] = []
    on_trial = _numbering_reporter(logger, config.search_metric, numbers)
    run_search(
        prepare_features(train, config),
        prepare_target(train, config),
        config,
        storage=storage,
        study_name=study_name,
        n_trials=trials,
        timeout=timeout,
        on_trial=on_trial,
        max_threads=1,
        sampler_seed=config.split.random_state + 1 + shard,
        ensemble=False,
    )
    identity = record_process(storage, study_name, f"shard-{shard}", numbers)
    logger.info(
        "shard %d (%s pid %d): %d trials", shard, identity["host"], os.getpid(), len(numbers)
    )
    return {"shard": shard, **identity}


def _numbering_reporter(
    logger: Any, metric: str, numbers: list[int]
) -> Callable[[dict[str, Any]], None]:
    """Log each trial (as the one-process search does) and note its number in ``numbers``."""
    report = trial_reporter(logger, metric)

    def on_trial(info: dict[str, Any]) -> None:
        numbers.append(info["number"])
        report(info)

    return on_trial


def record_process(
    storage: str, study_name: str, name: str, trial_numbers: Sequence[int]
) -> dict[str, Any]:
    """Note in the study which process (host, pid) finished which trials.

    Stored as the study user attribute ``loopml.process.<name>``, so the split of the work can
    be read back from the storage (``optuna.load_study(...).user_attrs``) after the run.
    """
    identity = {"host": socket.gethostname(), "pid": os.getpid(), "trials": list(trial_numbers)}
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.set_user_attr(f"{PROCESS_ATTR_PREFIX}{name}", identity)
    return identity


@task(name="search-collect", cache_policy=NO_CACHE)
def collect_search(
    config: ProjectConfig, train: pd.DataFrame, *, storage: str, study_name: str
) -> SearchResult:
    """The shared study read back into one search result (artifact and log as usual)."""
    # A budget of zero trials makes run_search add nothing and summarise the study as stored:
    # the same SearchResult (best trial, per-family bests, trial table) as a one-process search.
    result = run_search(
        prepare_features(train, config),
        prepare_target(train, config),
        config,
        storage=storage,
        study_name=study_name,
        n_trials=0,
    )
    publish_search(config, result, get_run_logger())
    return result


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Partition:
    """One slice of a batch, parked as a Parquet file for a worker to score.

    Attributes:
        number: position in the batch (outputs are reassembled in this order).
        path: the slice's rows.
        offset: the batch row number of its first row (row ids stay those of one pass).
        rows: rows in the slice.
    """

    number: int
    path: Path
    offset: int
    rows: int


@dataclass(frozen=True)
class ScoredPartition:
    """What a worker wrote for one partition: user output and (unless logged) log rows."""

    number: int
    rows: int
    output_path: Path
    log_path: Path | None


def score_in_partitions(
    runtime: Runtime,
    serving: ServingModel,
    source: Path,
    *,
    batch_id: str,
    out: Path | None,
    partition_rows: int = CHUNK_ROWS,
    reasons: int | None = None,
    background: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score ``source`` as partitions scored by separate tasks; same result as ``score_file``.

    The batch is cut into Parquet partitions under ``LOOPML_HOME`` (workers must share it),
    every partition is scored by its own task, then the outputs are joined in batch order into
    ``out`` and the log rows are written to the prediction log as one atomic batch, only if
    the batch is not logged yet. The partition files are removed at the end. With ``reasons``,
    every partition explains its rows against the same ``background`` rows.
    """
    check_reasons(reasons)
    log = PredictionLog(runtime.settings.predictions_dir, runtime.name)
    already_logged = log.has_batch(batch_id)
    folder = runtime.settings.predictions_dir / ".partitions" / f"{batch_id}-{uuid.uuid4().hex[:8]}"
    scored_at = now()  # one time for the whole batch, as in one pass
    try:
        partitions = partition_batch(
            source, folder, partition_rows=partition_rows, id_column=runtime.config.id_column
        )
        futures = [
            score_partition.submit(
                runtime.config,
                serving,
                partition,
                batch_id=batch_id,
                scored_at=scored_at,
                keep_log_rows=not already_logged,
                reasons=reasons,
                background=background,
            )
            for partition in partitions
        ]
        scored = _completed_results(futures, "scoring partition", all_required=True)
        return assemble_scores(
            runtime,
            serving,
            scored,
            batch_id=batch_id,
            out=out,
            already_logged=already_logged,
            reasons=reasons,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@task(name="partition-batch", cache_policy=NO_CACHE)
def partition_batch(
    source: Path, folder: Path, *, partition_rows: int, id_column: str | None = None
) -> list[Partition]:
    """Cut ``source`` into Parquet files of ``partition_rows`` rows (read in chunks); a batch
    that repeats an id in ``id_column`` is refused here, before any partition is scored."""
    folder.mkdir(parents=True, exist_ok=True)
    partitions = []
    offset = 0
    unique_ids = UniqueRowIds(id_column)
    for number, chunk in enumerate(iter_table_chunks(source, partition_rows)):
        unique_ids.check(chunk)
        path = folder / f"input-{number:05d}.parquet"
        write_frame(chunk, path)
        partitions.append(Partition(number, path, offset, len(chunk)))
        offset += len(chunk)
    get_run_logger().info("%d rows in %d partition(s)", offset, len(partitions))
    return partitions


@task(
    name="score-partition",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def score_partition(
    config: ProjectConfig,
    serving: ServingModel,
    partition: Partition,
    *,
    batch_id: str,
    scored_at: datetime,
    keep_log_rows: bool,
    reasons: int | None = None,
    background: pd.DataFrame | None = None,
) -> ScoredPartition:
    """Score one partition into an output file and, if wanted, a log-rows file beside it."""
    output, log_rows = score_chunk(
        serving.model,
        pd.read_parquet(partition.path),
        config,
        batch_id=batch_id,
        model_version=serving.version,
        offset=partition.offset,
        scored_at=scored_at,
        reasons=reasons,
        background=background,
    )
    output_path = partition.path.with_name(f"output-{partition.number:05d}.parquet")
    write_frame(output, output_path)
    log_path = None
    if keep_log_rows:
        log_path = partition.path.with_name(f"log-{partition.number:05d}.parquet")
        write_frame(log_rows, log_path)
    get_run_logger().info(
        "partition %d: %d rows scored (rows %d-%d)",
        partition.number,
        len(output),
        partition.offset,
        partition.offset + len(output) - 1,
    )
    return ScoredPartition(partition.number, len(output), output_path, log_path)


@task(name="assemble-scores", cache_policy=NO_CACHE)
def assemble_scores(
    runtime: Runtime,
    serving: ServingModel,
    scored: list[ScoredPartition],
    *,
    batch_id: str,
    out: Path | None,
    already_logged: bool,
    reasons: int | None = None,
) -> dict[str, Any]:
    """Outputs joined in batch order into ``out``; log rows committed as one batch, once."""
    logger = get_run_logger()
    ordered = sorted(scored, key=lambda part: part.number)
    if out is not None:
        rows = write_output_chunks(_frames(part.output_path for part in ordered), out)
    else:
        rows = sum(part.rows for part in ordered)
    if already_logged:
        logger.info("batch %s is in the prediction log already: not logged twice", batch_id)
    else:
        log = PredictionLog(runtime.settings.predictions_dir, runtime.name)
        log.write_batch(batch_id, _frames(part.log_path for part in ordered))
    result = publish_scoring(
        runtime,
        serving,
        batch_id=batch_id,
        rows=rows,
        out=out,
        logged=not already_logged,
        reasons=reasons,
    )
    return {**result, "partitions": len(ordered)}


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Parquet for the hand-over between tasks; object columns of mixed types as strings."""
    try:
        frame.to_parquet(path, index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        mixed = frame.select_dtypes(include="object").columns
        frame.astype({column: "string" for column in mixed}).to_parquet(path, index=False)


def _frames(paths: Iterator[Path | None]) -> Iterator[pd.DataFrame]:
    for path in paths:
        yield pd.read_parquet(path)


# --------------------------------------------------------------------------- futures


def _completed_results(
    futures: list[PrefectFuture], what: str, *, all_required: bool = False
) -> list[Any]:
    """Results of the futures that completed; failures are logged (or raised if required).

    Raises:
        Exception: the first failure, when every future failed or ``all_required`` is set.
    """
    logger = get_run_logger()
    results, failed = [], []
    for future in futures:
        future.wait()
        if future.state.is_completed():
            results.append(future.result())
        else:
            failed.append(future)
            logger.warning("%s failed: %s", what, future.state.message)
    if failed and (all_required or not results):
        failed[0].result()  # raises the task's exception
        raise RuntimeError(f"{what} ended in state {failed[0].state.name}")
    return results
