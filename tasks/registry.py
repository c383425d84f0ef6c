"""Register candidates in MLflow, run the promotion gate and move aliases (with a ledger entry)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from loopml import events, ledger, links, modeling
from loopml.drift.profile import build_reference_profile
from loopml.features import prepare_features
from loopml.gate import GateDecision
from loopml.ledger import promotion_lock
from loopml.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_FAILED,
    SEARCH_TRIALS_TABLE,
    TAG_GATE,
    TAG_PREFIX,
    LoggedDataset,
    RegisteredVersion,
    clear_alias,
    dangling_runs,
    end_run_failed,
    get_version,
    list_versions,
    log_and_register,
    set_alias,
    set_version_tags,
    undecided_versions,
    version_by_alias,
)
from loopml.runtime import Runtime
from loopml.search.result import trials_table
from tasks.artifacts import artifact_key, markdown_table
from tasks.events import emit
from tasks.logs import library_output_to_log
from tasks.training import Evaluation, TrainedModel


def _prefect_link(runtime: Runtime) -> dict[str, str]:
    """Run tags pointing back at the Prefect flow run that trained the model: the run's
    description (``mlflow.note.content``, shown on the run page) and a plain URL tag."""
    run_id = flow_run.get_id()
    if not run_id:
        return {}
    url = links.ui_urls(runtime.settings.stack_file).prefect_flow_run(run_id)
    where = f"[{flow_run.get_name()}]({url})" if url else f"`{flow_run.get_name()}` ({run_id})"
    tags = {
        f"{TAG_PREFIX}prefect_flow_run_id": run_id,
        "mlflow.note.content": f"Trained by the Prefect flow run {where}.",
    }
    if url:
        tags[f"{TAG_PREFIX}prefect_flow_run_url"] = url
    return tags


def _run_name(runtime: Runtime, family: str) -> str:
    """``train-PROJECT-vN-FAMILY``: N is the version this run is about to register (the
    MLflow runs list otherwise shows one name for every run)."""
    versions = list_versions(runtime.mlflow, runtime.config.name)
    upcoming = int(versions[-1].version) + 1 if versions else 1
    return f"train-{runtime.config.name}-v{upcoming}-{family}"


@task(name="register", cache_policy=NO_CACHE)
def register_candidate(
    runtime: Runtime,
    candidate: TrainedModel,
    evaluation: Evaluation,
    *,
    data_hash: str,
    suite_hash: str,
    trigger: dict[str, Any],
    data_policy: dict[str, Any] | None = None,
) -> RegisteredVersion:
    """Log the run and register a new version tagged with its lineage; alias it ``challenger``.

    ``data_policy`` (a retraining's chosen training-data policy and its backtest) goes on the
    run as params/metrics, on the version as a tag and into the ledger. Versions and runs left
    half-done by an earlier process that died are settled first.
    """
    config = runtime.config
    train, test_metrics = evaluation.train, evaluation.metrics
    recover_interrupted(runtime)
    policy_params, policy_metrics = _policy_record(data_policy)
    champion = version_by_alias(runtime.mlflow, config.name, CHAMPION)
    features = prepare_features(train, config)
    # The signature describes the table as users send it (integer columns stay integers), not
    # the float-cast frame the pipeline sees: mlflow.pyfunc refuses int64 for a double column.
    raw_features = train[config.columns.features]
    with tempfile.TemporaryDirectory() as scratch, library_output_to_log():
        folder = Path(scratch)
        reference_files = {
            "train": _write(train, folder / "train.parquet"),
            "test": _write(evaluation.test, folder / "test.parquet"),
        }
        profile = build_reference_profile(
            features, config.columns.numeric, config.columns.categorical
        )
        reference_files["profile"] = _write_json(profile.to_dict(), folder / "profile.json")
        reference_files["importances"] = _write_json(
            evaluation.importances, folder / "importances.json"
        )
        version_tags = {
            f"{TAG_PREFIX}training_data_hash": data_hash,
            f"{TAG_PREFIX}suite_hash": suite_hash,
            f"{TAG_PREFIX}parent_version": str(champion.version) if champion else "none",
            f"{TAG_PREFIX}family": candidate.family,
            f"{TAG_PREFIX}trigger": trigger.get("kind", "manual"),
            f"{TAG_PREFIX}batch_id": str(trigger.get("batch_id") or ""),
            f"{TAG_PREFIX}training_rows": str(len(train)),
            **{f"{TAG_PREFIX}test_{k}": f"{v:.6g}" for k, v in test_metrics.items()},
            **{f"{TAG_PREFIX}{k}": f"{v:.6g}" for k, v in candidate.cv_metrics.items()},
        }
        if candidate.threshold is not None:
            version_tags[f"{TAG_PREFIX}threshold"] = f"{candidate.threshold:.6g}"
        if data_policy:
            version_tags[f"{TAG_PREFIX}data_policy"] = str(data_policy["policy"])
        registered = log_and_register(
            client=runtime.mlflow,
            experiment_id=runtime.experiment_id,
            name=config.name,
            model=candidate.model,
            input_example=raw_features.head(20),
            training_features=raw_features,
            trusted_types=modeling.skops_trusted_types(candidate.model),
            params={
                "family": candidate.family,
                **candidate.params,
                **({} if candidate.threshold is None else {"threshold": candidate.threshold}),
                **policy_params,
            },
            metrics={
                **policy_metrics,
                **{f"test_{k}": v for k, v in test_metrics.items()},
                **candidate.cv_metrics,
                "search_trials": candidate.search.n_trials,
                "search_pruned": candidate.search.n_pruned,
            },
            run_tags={
                f"{TAG_PREFIX}trigger": trigger.get("kind", "manual"),
                **_prefect_link(runtime),
            },
            version_tags=version_tags,
            figures=evaluation.figures,
            reference_files=reference_files,
            run_name=_run_name(runtime, candidate.family),
            datasets=[
                LoggedDataset(train, "training", f"{config.name}-training", config.target),
                LoggedDataset(
                    evaluation.test, "evaluation", f"{config.name}-held-out", config.target
                ),
            ],
            tables={SEARCH_TRIALS_TABLE: trials_table(candidate.search)},
        )
    with promotion_lock(runtime.settings.home, config.name):
        set_alias(runtime.mlflow, config.name, CHALLENGER, registered.version)
    ledger.append_entry(
        runtime.settings.ledger_dir,
        config.name,
        {
            "action": "registered",
            "version": registered.version,
            "run_id": registered.run_id,
            "family": candidate.family,
            "test_metrics": test_metrics,
            "trigger": trigger,
            **({"data_policy": data_policy} if data_policy else {}),
        },
    )
    emit(
        config.name,
        events.MODEL_REGISTERED,
        {
            "version": registered.version,
            "run_id": registered.run_id,
            "family": candidate.family,
            "metrics": test_metrics,
            "batch_id": trigger.get("batch_id"),
        },
    )
    get_run_logger().info("registered %s version %s", config.name, registered.version)
    return registered


PARENT_TAG = "parent-tag"


@task(name="promotion-gate", cache_policy=NO_CACHE)
def apply_gate(
    runtime: Runtime,
    registered: RegisteredVersion,
    decision: GateDecision,
    *,
    trigger: dict[str, Any],
    details: dict[str, Any] | None = None,
    decided_against: str | None = PARENT_TAG,
    redecide: Callable[[ModelVersion], GateDecision] | None = None,
) -> GateDecision:
    """Move ``champion`` to the candidate when the gate says so; record the decision either way.

    Compare-and-set: under the promotion lock the champion is re-read just before the move. If
    it is no longer ``decided_against`` (the champion the decision was made against; by default
    the version's ``parent_version`` tag), another writer promoted in between: the candidate is
    judged again against the new champion with ``redecide`` (``loopml train`` does this), or,
    without one, refused (retraining: its two-sided comparison belongs to the old champion).
    """
    config = runtime.config
    if decided_against == PARENT_TAG:
        parent = get_version(runtime.mlflow, config.name, registered.version).tags.get(
            f"{TAG_PREFIX}parent_version"
        )
        decided_against = None if parent in (None, "none") else parent
    with promotion_lock(runtime.settings.home, config.name):
        previous = version_by_alias(runtime.mlflow, config.name, CHAMPION)
        previous_version = None if previous is None else str(previous.version)
        if previous_version != decided_against:
            decision = _champion_moved(decision, decided_against, previous, redecide)
        entry = {
            "action": "promoted" if decision.promote else "refused",
            "version": registered.version,
            "previous_champion": previous_version,
            "reason": decision.reason,
            "decision": decision.to_dict(),
            "trigger": trigger,
            **(details or {}),
        }
        # The gate's reason may already start with its action ("promoted: ..."): say it once.
        reason = decision.reason.removeprefix(f"{entry['action']}: ")
        describe_decision(
            runtime,
            registered.version,
            f"{entry['action'].capitalize()} by the promotion gate: {reason}",
        )
        # Alias before tag: a process dying in between leaves a champion whose gate tag is
        # still "pending", which the next run records as promoted (not as failed).
        if decision.promote:
            set_alias(runtime.mlflow, config.name, CHAMPION, registered.version)
            clear_alias(runtime.mlflow, config.name, CHALLENGER)
            mark_replaced(runtime, previous, registered.version, "replaced")
        set_version_tags(
            runtime.mlflow,
            config.name,
            registered.version,
            {TAG_GATE: "promoted" if decision.promote else "refused"},
        )
        ledger.append_entry(runtime.settings.ledger_dir, config.name, entry)
    if decision.promote:
        emit(
            config.name,
            events.MODEL_PROMOTED,
            {
                "version": registered.version,
                "previous_champion": entry["previous_champion"],
                "reason": decision.reason,
                "batch_id": trigger.get("batch_id"),
            },
        )
    create_markdown_artifact(
        key=artifact_key(config.name, "promotion"),
        markdown=_decision_markdown(config.name, registered.version, decision),
        description=f"{config.name} v{registered.version}: {entry['action']}",
    )
    get_run_logger().info("gate: %s (%s)", entry["action"], decision.reason)
    return decision


def _champion_moved(
    decision: GateDecision,
    decided_against: str | None,
    champion: ModelVersion | None,
    redecide: Callable[[ModelVersion], GateDecision] | None,
) -> GateDecision:
    """The decision once the champion is found changed since the candidate was judged."""
    was = "no champion" if decided_against is None else f"v{decided_against}"
    now = "none" if champion is None else f"v{champion.version}"
    get_run_logger().warning("the champion changed from %s to %s during this run", was, now)
    if not decision.promote:
        return decision  # a refusal stays one, whoever is champion now
    if champion is not None and redecide is not None:
        return redecide(champion)
    return GateDecision(
        promote=False,
        reason=(
            f"the champion changed from {was} to {now} while this version was judged: "
            "not promoted (run again to compare with the new champion)"
        ),
        metric=decision.metric,
        comparisons=decision.comparisons,
    )


def recover_interrupted(runtime: Runtime) -> list[dict[str, Any]]:
    """Settle what a process that died left half-done: end its RUNNING MLflow runs as FAILED,
    and give every version registered without a gate decision one (with a ledger line).

    A version that holds ``champion`` was promoted before its process died and is recorded as
    such; any other is marked failed (it was never compared to completion).
    """
    config = runtime.config
    logger = get_run_logger()
    for run in dangling_runs(runtime.mlflow, runtime.experiment_id):
        end_run_failed(runtime.mlflow, run.info.run_id)
        logger.warning("MLflow run %s of a dead process: ended FAILED", run.info.run_id)
    settled = []
    with promotion_lock(runtime.settings.home, config.name):
        champion = version_by_alias(runtime.mlflow, config.name, CHAMPION)
        for model_version in undecided_versions(runtime.mlflow, config.name):
            version = str(model_version.version)
            promoted = champion is not None and str(champion.version) == version
            verdict = "promoted" if promoted else GATE_FAILED
            reason = (
                "its process died after moving the champion alias; recorded by a later run"
                if promoted
                else "its registration was interrupted before the promotion gate decided; "
                "marked failed by a later run (never champion)"
            )
            set_version_tags(runtime.mlflow, config.name, version, {TAG_GATE: verdict})
            entry = ledger.append_entry(
                runtime.settings.ledger_dir,
                config.name,
                {
                    "action": verdict,
                    "version": version,
                    "reason": reason,
                    "trigger": {"kind": "recovery"},
                },
            )
            settled.append(entry)
            if not promoted:
                emit(config.name, events.MODEL_FAILED, {"version": version, "reason": reason})
            logger.warning("%s v%s: %s", config.name, version, reason)
    return settled


def describe_decision(runtime: Runtime, version: str, text: str) -> None:
    """The version's description (shown on its MLflow page) says why it is or is not champion."""
    runtime.mlflow.update_model_version(runtime.config.name, str(version), description=text)


def mark_replaced(runtime: Runtime, previous: Any, champion: str, state: str) -> None:
    """Keep the gate tag current: the champion just replaced no longer says ``promoted``."""
    if previous is not None and str(previous.version) != str(champion):
        set_version_tags(
            runtime.mlflow, runtime.config.name, previous.version, {f"{TAG_PREFIX}gate": state}
        )


def promote_version(
    runtime: Runtime, version: str, *, action: str, reason: str, trigger: dict[str, Any]
) -> dict[str, Any]:
    """Point ``champion`` at ``version`` by hand (promote or rollback), with a ledger entry."""
    config = runtime.config
    get_version(runtime.mlflow, config.name, version)
    with promotion_lock(runtime.settings.home, config.name):
        previous = version_by_alias(runtime.mlflow, config.name, CHAMPION)
        set_alias(runtime.mlflow, config.name, CHAMPION, version)
        rolled_back = action == "rolled_back"
        set_version_tags(
            runtime.mlflow,
            config.name,
            version,
            {TAG_GATE: "restored" if rolled_back else "promoted"},
        )
        describe_decision(
            runtime, version, f"{action.replace('_', ' ').capitalize()} by hand: {reason}"
        )
        mark_replaced(runtime, previous, version, "rolled_back" if rolled_back else "replaced")
        challenger = version_by_alias(runtime.mlflow, config.name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version):
            clear_alias(runtime.mlflow, config.name, CHALLENGER)
        entry = ledger.append_entry(
            runtime.settings.ledger_dir,
            config.name,
            {
                "action": action,
                "version": str(version),
                "previous_champion": str(previous.version) if previous else None,
                "reason": reason,
                "trigger": trigger,
            },
        )
    event = events.MODEL_ROLLED_BACK if action == "rolled_back" else events.MODEL_PROMOTED
    emit(
        config.name,
        event,
        {
            "version": str(version),
            "previous_champion": entry["previous_champion"],
            "reason": reason,
        },
    )
    return entry


def _policy_record(data_policy: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """MLflow params and metrics of a retraining's data-policy choice."""
    if not data_policy:
        return {}, {}
    params = {"data_policy": data_policy["policy"]}
    metrics: dict[str, float] = {"backtest_rows": float(data_policy.get("backtest_rows") or 0)}
    metric = data_policy.get("metric")
    for policy, score in (data_policy.get("scores") or {}).items():
        metrics[f"backtest_{policy}_{metric}"] = float(score)
    for policy, rows in (data_policy.get("training_rows") or {}).items():
        metrics[f"backtest_{policy}_rows"] = float(rows)
    return params, metrics


def _decision_markdown(project: str, version: str, decision: GateDecision) -> str:
    rows = [{"comparison": name, **values} for name, values in decision.comparisons.items()]
    verdict = "promoted to champion" if decision.promote else "kept as challenger"
    return (
        f"# {project} v{version}: {verdict}\n\n{decision.reason}\n\n"
        f"Gate metric: `{decision.metric}`\n\n{markdown_table(rows)}\n"
    )


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


def _write_json(payload: Any, path: Path) -> Path:
    path.write_text(json.dumps(payload, default=str))
    return path
