"""Retraining tasks: guards, the data a retraining learns from, and the two-sided comparison."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import evaluation, ledger
from loopml.errors import LoopmlError
from loopml.features import align_dtypes, prepare_features, prepare_target
from loopml.gate import GateDecision, decide_retrain_promotion
from loopml.labels import LabelStore, joined_predictions, recent_window, split_recent_window
from loopml.registry import (
    download_reference,
    get_version,
    require_champion,
)
from loopml.runtime import Runtime
from loopml.scoring import PredictionLog
from tasks.ingest import transient
from tasks.models import load_checked

RECENT_EVALUATION_SHARE = 0.3
MIN_RECENT_EVALUATION_ROWS = 30


class RetrainingBusy(LoopmlError):
    """Another retraining of the same project holds the lock."""


@contextmanager
def retraining_lock(runtime: Runtime) -> Iterator[None]:
    """At most one retraining per project at a time on this LOOPML_HOME (the deployment's
    concurrency limit does the same across workers)."""
    path = runtime.settings.home / "locks" / f"retrain-{runtime.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainingBusy(
                f"a retraining of project {runtime.name!r} is already running"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@task(name="claim-batch", cache_policy=NO_CACHE)
def claim_trigger(runtime: Runtime, trigger: dict[str, Any]) -> bool:
    """Record that this retraining started; False when the same batch already caused one."""
    batch_id = trigger.get("batch_id")
    entry = {"action": "retrain_started", "batch_id": batch_id, "trigger": trigger}
    if not batch_id:
        ledger.append_entry(runtime.settings.ledger_dir, runtime.name, entry)
        return True
    claimed = ledger.append_unless(
        runtime.settings.ledger_dir,
        runtime.name,
        entry,
        lambda entries: claimed_by(entries, batch_id),
    )
    if claimed is None:
        get_run_logger().warning("batch %s already caused a retraining: skipped", batch_id)
    return claimed is not None


def claimed_by(entries: list[dict[str, Any]], batch_id: str) -> bool:
    """Whether a retraining run claimed ``batch_id`` and did not fail (a run that failed or
    crashed, e.g. on validation, gives its batch back so it can be retried)."""
    started = {
        (e.get("trigger") or {}).get("flow_run_id")
        for e in entries
        if e.get("action") == "retrain_started" and e.get("batch_id") == batch_id
    }
    failed = {e.get("flow_run_id") for e in entries if e.get("action") == "retrain_failed"}
    return bool(started - failed)


def release_claim(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: a failed or crashed retraining gives back the batch it claimed, if any."""
    from loopml.settings import load_settings

    parameters = flow_run.parameters or {}
    ledger_dir, project = load_settings().ledger_dir, parameters["project"]
    run_id = str(flow_run.id)
    claimed = any(
        e.get("action") == "retrain_started"
        and (e.get("trigger") or {}).get("flow_run_id") == run_id
        for e in ledger.read_entries(ledger_dir, project)
    )
    if claimed:
        ledger.append_entry(
            ledger_dir,
            project,
            {
                "action": "retrain_failed",
                "batch_id": parameters.get("batch_id"),
                "reason": (state.message or state.name or "")[:500],
                "flow_run_id": run_id,
            },
        )


@dataclass
class RetrainingData:
    """Rows a retraining learns from and is judged on."""

    train: pd.DataFrame
    frozen_test: pd.DataFrame
    recent_evaluation: pd.DataFrame
    window_rows: int
    window_train_rows: int
    champion_version: str


@task(
    name="gather-training-data",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def gather_data(runtime: Runtime, as_of: datetime | None) -> RetrainingData:
    """Champion's training data + the recent labelled window; the frozen held-out set."""
    config = runtime.config
    champion = require_champion(runtime.mlflow, runtime.name)
    cache = runtime.settings.references_dir / runtime.name
    reference = pd.read_parquet(
        download_reference(runtime.mlflow, champion.run_id, "train.parquet", cache)
    )
    frozen_test = pd.read_parquet(
        download_reference(runtime.mlflow, champion.run_id, "test.parquet", cache)
    )
    store = LabelStore(runtime.settings.labels_dir, runtime.name)
    joined = joined_predictions(
        PredictionLog(runtime.settings.predictions_dir, runtime.name), store
    )
    window = align_dtypes(
        recent_window(joined, store.labelled_batches(), config, now=as_of), reference
    )
    keep = [*config.columns.features, config.target]
    window_train, recent_evaluation, duplicates = split_recent_window(
        window,
        keep,
        evaluation_share=RECENT_EVALUATION_SHARE,
        min_evaluation_rows=MIN_RECENT_EVALUATION_ROWS,
        held_out=frozen_test,
    )
    train = pd.concat(
        [reference[[c for c in keep if c in reference.columns]], window_train[keep]],
        ignore_index=True,
    )
    get_run_logger().info(
        "retraining data: %d reference rows + %d recent labelled rows (%d held back to judge; "
        "%d left out as copies of rows it is judged on)",
        len(reference),
        len(window_train),
        len(recent_evaluation),
        duplicates,
    )
    return RetrainingData(
        train=train,
        frozen_test=frozen_test,
        recent_evaluation=recent_evaluation,
        window_rows=len(window),
        window_train_rows=len(window_train),
        champion_version=str(champion.version),
    )


@task(name="challenger-vs-champion", cache_policy=NO_CACHE)
def compare_retrained(
    runtime: Runtime, candidate: Any, data: RetrainingData
) -> tuple[GateDecision, dict[str, float], dict[str, float] | None]:
    """Both models on the frozen held-out set and on the recent window; the retraining gate."""
    config = runtime.config
    metric = config.gate_metric
    champion = load_checked(
        runtime, get_version(runtime.mlflow, runtime.name, data.champion_version)
    )

    def score(model: Any, frame: pd.DataFrame) -> dict[str, float]:
        return evaluation.evaluate(
            model, prepare_features(frame, config), prepare_target(frame, config), config
        )

    candidate_old = score(candidate.model, data.frozen_test)
    champion_old = score(champion, data.frozen_test)
    candidate_recent = champion_recent = None
    if not data.recent_evaluation.empty:
        candidate_recent = score(candidate.model, data.recent_evaluation)
        champion_recent = score(champion, data.recent_evaluation)
    decision = decide_retrain_promotion(
        candidate_old=candidate_old[metric],
        champion_old=champion_old[metric],
        candidate_recent=None if candidate_recent is None else candidate_recent.get(metric),
        champion_recent=None if champion_recent is None else champion_recent.get(metric),
        metric=metric,
        old_data_tolerance=config.gate.old_data_tolerance,
        min_improvement=config.gate.min_improvement,
    )
    get_run_logger().info("retraining gate: %s", decision.reason)
    return decision, candidate_old, candidate_recent
