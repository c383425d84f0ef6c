"""The training flow: validate -> split -> search -> fit -> evaluate -> register -> gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State

from flows.naming import run_name, untagged_tasks
from flows.states import quarantined
from loopml.data import frame_hash
from loopml.errors import ValidationFailed
from loopml.features import labelled_rows
from loopml.profiling import suite_hash
from loopml.runtime import open_runtime
from loopml.validation import load_suite
from tasks.documentation import document_candidate
from tasks.estimation import record_estimator
from tasks.ingest import load_table
from tasks.parallel import search_candidates
from tasks.registry import apply_gate, register_candidate
from tasks.training import (
    compare_with_champion,
    evaluate_candidate,
    fit_candidate,
    judge_against,
    split_data,
)
from tasks.validation import validate_batch


@flow(name="train", flow_run_name=run_name("train"), log_prints=False)
@untagged_tasks
def train_flow(
    project: str,
    project_dir: str = ".",
    data: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    trigger: dict[str, Any] | None = None,
) -> dict[str, Any] | State:
    """Train, register and gate a new version of ``project``'s model (training data that fails
    the suite is quarantined and the run ends ``Quarantined``; calling the flow raises
    ValidationFailed)."""
    runtime = open_runtime(project, project_dir)
    source = data_location(runtime.project_dir, data or runtime.config.data, runtime.config.sql_url)
    frame, batch_id = load_table(source, runtime.config.sql_url)
    try:
        validate_batch(
            runtime,
            frame,
            source=_as_file(source, runtime.config.sql_url),
            batch_id=batch_id,
            require_target=True,
        )
    except ValidationFailed as error:
        return quarantined(error)  # nothing trained: the run ends Quarantined, not Failed
    train, test = split_data(runtime, labelled_rows(frame, runtime.config))
    study_name = f"{project}-{flow_run.get_id()}"
    search = search_candidates(
        runtime, train, study_name=study_name, trials=trials, timeout=timeout
    )
    candidate = fit_candidate(runtime, train, search)
    evaluation = evaluate_candidate(runtime, candidate, train, test)
    metrics = evaluation.metrics
    judgement = compare_with_champion(runtime, candidate, metrics, test)
    trigger = {"kind": "manual", "batch_id": batch_id, **(trigger or {})}
    registered = register_candidate(
        runtime,
        candidate,
        evaluation,
        data_hash=frame_hash(frame),
        suite_hash=suite_hash(load_suite(runtime.suite_path)),
        trigger=trigger,
    )
    decision = document_candidate(
        runtime, registered, candidate, evaluation, decision=judgement.decision
    )
    record_estimator(runtime, registered, candidate.model, test, metrics)
    decision = apply_gate(
        runtime,
        registered,
        decision,
        trigger=trigger,
        decided_against=judgement.champion_version,
        redecide=lambda champion: judge_against(runtime, candidate, metrics, test, champion),
    )
    return {
        "project": project,
        "version": registered.version,
        "run_id": registered.run_id,
        "family": candidate.family,
        "best_params": candidate.params,
        "threshold": candidate.threshold,
        "cv_metrics": candidate.cv_metrics,
        "test_metrics": metrics,
        "trials": search.n_trials,
        "pruned": search.n_pruned,
        "promoted": decision.promote,
        "reason": decision.reason,
        "batch_id": batch_id,
    }


def data_location(project_dir: Path, data: str, sql_url: str | None) -> str:
    """A data path relative to the project folder, or the SQL query unchanged."""
    if sql_url:
        return data
    path = Path(data).expanduser()
    return str(path if path.is_absolute() else project_dir / path)


def _as_file(source: str, sql_url: str | None) -> Path | None:
    return None if sql_url else Path(source)
