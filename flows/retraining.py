"""The retraining flow: data policies backtested -> challenger -> gate that follows the traffic."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.runtime import deployment, flow_run
from prefect.states import State

from flows.naming import run_name, untagged_tasks
from flows.states import quarantined
from loopml.data import frame_hash
from loopml.errors import ValidationFailed
from loopml.profiling import suite_hash
from loopml.runtime import open_runtime
from loopml.validation import load_suite
from tasks.documentation import document_candidate
from tasks.estimation import record_estimator
from tasks.parallel import search_candidates
from tasks.registry import apply_gate, register_candidate
from tasks.retraining import (
    choose_training_data,
    claim_trigger,
    compare_retrained,
    gather_data,
    release_claim,
    retraining_lock,
    search_budget,
)
from tasks.training import evaluate_candidate, fit_candidate
from tasks.validation import validate_batch


@flow(
    name="retrain",
    flow_run_name=run_name("retrain"),
    log_prints=False,
    on_failure=[release_claim],
    on_crashed=[release_claim],
)
@untagged_tasks
def retrain_flow(
    project: str,
    project_dir: str = ".",
    batch_id: str | None = None,
    event: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any] | State:
    """Retrain ``project``; promote the challenger only if the gate says so.

    ``batch_id``/``event`` name what triggered the run (an automation passes them); the same
    batch never causes two retrainings. Retraining data that fails the suite is quarantined and
    the run ends ``Quarantined`` (calling the flow raises ValidationFailed). ``as_of`` defaults
    to the run's scheduled start time.
    """
    runtime = open_runtime(project, project_dir)
    as_of = as_of or flow_run.get_scheduled_start_time()
    trigger = {
        "kind": "event" if event or batch_id else _run_kind(),
        "batch_id": batch_id,
        "event": event,
        "flow_run_id": flow_run.get_id(),
    }
    with retraining_lock(runtime):
        skipped = claim_trigger(runtime, trigger)
        if skipped:
            return {"project": project, "skipped": True, "batch_id": batch_id, "reason": skipped}
        data = gather_data(runtime, as_of)
        try:
            validate_batch(
                runtime,
                data.train,
                source=None,
                batch_id=f"retrain-{frame_hash(data.train)}",
                require_target=True,
                require_id=False,
            )
        except ValidationFailed as error:
            # Nothing trained: the run ends Quarantined (Failed-type, so release_claim gives
            # the trigger batch back), like train, validate and score.
            return quarantined(error)
        study_name = f"{project}-retrain-{flow_run.get_id()}"

        def search(frame: Any, name: str, budget: int, seconds: float | None) -> Any:
            return search_candidates(
                runtime, frame, study_name=name, trials=budget, timeout=seconds
            )

        # One budget, shared: with enough recent rows for recent_only, half the trials search
        # on the recent rows (their own best configuration), half on all history.
        budget = search_budget(runtime.config, data, trials, timeout)
        searches = {"all_history": search(data.train, study_name, *budget["all_history"])}
        if "recent_only" in budget:
            searches["recent_only"] = search(
                data.window_train, f"{study_name}-recent", *budget["recent_only"]
            )
        choice, chosen = choose_training_data(runtime, data, searches)
        candidate = fit_candidate(
            runtime, chosen.frame, searches.get(chosen.policy, searches["all_history"]),
            chosen.weights,
        )  # fmt: skip
        evaluation = evaluate_candidate(runtime, candidate, chosen.frame, data.frozen_test)
        metrics = evaluation.metrics
        decision, _, recent_metrics = compare_retrained(runtime, candidate, data)
        registered = register_candidate(
            runtime,
            candidate,
            evaluation,
            data_hash=frame_hash(chosen.frame),
            suite_hash=suite_hash(load_suite(runtime.suite_path)),
            trigger=trigger,
            data_policy=choice.to_dict(),
        )
        decision = document_candidate(runtime, registered, candidate, evaluation, decision=decision)
        record_estimator(runtime, registered, candidate.model, data.frozen_test, metrics)
        decision = apply_gate(
            runtime,
            registered,
            decision,
            trigger=trigger,
            details={"data_policy": choice.to_dict()},
            decided_against=data.champion_version,
        )
    return {
        "project": project,
        "skipped": False,
        "version": registered.version,
        "family": candidate.family,
        "promoted": decision.promote,
        "reason": decision.reason,
        "comparisons": decision.comparisons,
        "test_metrics": metrics,
        "recent_metrics": recent_metrics,
        "data_policy": choice.to_dict(),
        "training_rows": len(chosen.frame),
        "reference_rows": len(data.reference),
        "recent_window_rows": data.window_rows,
        "recent_training_rows": len(data.window_train),
        "recent_evaluation_rows": len(data.recent_evaluation),
        "champion_before": data.champion_version,
        "batch_id": batch_id,
        "run_id": registered.run_id,
    }


def _run_kind() -> str:
    """``scheduled`` for a deployment run without a triggering event, else ``manual``."""
    return "scheduled" if deployment.get_id() else "manual"
