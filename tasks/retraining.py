"""Retraining tasks: guards, the data a retraining learns from, the policy backtest and the gate."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml import claims, ledger, monitoring
from loopml.claims import RetrainingBusy
from loopml.comparison import Scorer, compare_models, load_scorer, score_model, score_rows
from loopml.data_policies import (
    PolicyChoice,
    PolicyData,
    policy_data,
    run_backtest,
    split_newest,
)
from loopml.features import align_dtypes, prepare_features, prepare_target
from loopml.gate import GateDecision, decide_retrain_promotion
from loopml.gate_stats import drift_confirmed
from loopml.labels import (
    LabelStore,
    drop_copies,
    joined_predictions,
    recent_window,
    split_recent_window,
)
from loopml.registry import download_reference, require_champion
from loopml.runtime import Runtime
from loopml.scoring import LABEL, MODEL_VERSION, ROW_ID, PredictionLog, logged_features
from loopml.search.fit import fit_best
from tasks.ingest import transient

__all__ = ["RetrainingBusy", "retraining_lock"]


@contextmanager
def retraining_lock(runtime: Runtime) -> Iterator[None]:
    """At most one retraining per project at a time on this LOOPML_HOME (the deployment's
    concurrency limit does the same across workers)."""
    with claims.retraining_lock(runtime.settings.home / "locks", runtime.name):
        yield


@task(name="claim-batch", cache_policy=NO_CACHE)
def claim_trigger(runtime: Runtime, trigger: dict[str, Any]) -> str | None:
    """Record that this retraining started; the reason it may not, or ``None`` when claimed.

    Runs under :func:`retraining_lock`: claims of runs that died are released first. A batch
    already claimed never retrains again. An event inside the cooldown (read from the ledger,
    so restarting ``up`` does not reset it) is skipped unless it brings new labelled evidence
    that the champion is degraded.
    """
    settings = runtime.settings
    released = claims.release_dead_claims_locked(settings.ledger_dir, runtime.name)
    for entry in released:
        get_run_logger().warning("released the claim of a dead retraining run: %s", entry)
    batch_id = trigger.get("batch_id")
    cooldown = runtime.config.retraining.cooldown_seconds
    verdicts = monitoring.read_history(settings.monitoring_dir, runtime.name)
    why: list[str] = []

    def blocked(entries: list[dict[str, Any]]) -> bool:
        if batch_id and claims.claimed_by(entries, batch_id, lambda _: True):
            why.append(f"batch {batch_id} already caused a retraining")
            return True
        if trigger.get("event"):
            left = claims.cooldown_left(entries, datetime.now(UTC), cooldown)
            if left > 0 and not claims.new_evidence(batch_id, trigger.get("event"), verdicts):
                why.append(
                    f"inside the retraining cooldown ({left:.0f} s left) and batch {batch_id} "
                    "brings no new labelled evidence of degradation"
                )
                return True
        return False

    entry = {"action": "retrain_started", "batch_id": batch_id, "trigger": trigger}
    claimed = ledger.append_unless(settings.ledger_dir, runtime.name, entry, blocked)
    if claimed is None:
        get_run_logger().warning("retraining skipped: %s", why[0])
        return why[0]
    return None


def release_claim(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: a failed or crashed retraining gives back the batch it claimed, if any.

    Prefect calls it with the run alone (the flow's runtime is gone by then), so it is an
    entry point of its own and reads the settings from the environment.
    """
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
    """Rows a retraining learns from and is judged on.

    ``reference`` is the champion's training data; ``older`` the recent labelled rows before the
    newest block and ``backtest`` the newest rows the data-policy backtest scores on (both in
    time order, both learnt from by the final challenger); ``recent_evaluation`` the newest rows
    held back to judge challenger and champion (never learnt from); ``frozen_test`` the first
    champion's held-out set.
    """

    reference: pd.DataFrame
    older: pd.DataFrame
    backtest: pd.DataFrame
    frozen_test: pd.DataFrame
    recent_evaluation: pd.DataFrame
    window_rows: int
    champion_version: str

    @property
    def window_train(self) -> pd.DataFrame:
        """The recent rows the challenger may learn from, oldest first."""
        return pd.concat([self.older, self.backtest], ignore_index=True)

    @property
    def train(self) -> pd.DataFrame:
        """All history: the reference plus the recent rows (what the search learns from)."""
        return pd.concat([self.reference, self.window_train], ignore_index=True)


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
    policy = config.retraining
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
    older, newest, duplicates = split_recent_window(
        window,
        keep,
        evaluation_share=policy.evaluation_share,
        min_evaluation_rows=policy.min_evaluation_rows,
        held_out=frozen_test,
    )
    backtest, recent_evaluation = split_newest(
        newest,
        keep,
        backtest_share=policy.backtest_share,
        min_backtest_rows=policy.min_backtest_rows,
        min_gate_rows=policy.min_evaluation_rows,
    )
    # Reference rows identical to a judged recent row would let the challenger learn them.
    reference, reference_copies = drop_copies(
        reference[[c for c in keep if c in reference.columns]], [recent_evaluation], keep
    )
    get_run_logger().info(
        "retraining data: %d reference rows + %d recent labelled rows (%d of them newest, for "
        "the data-policy backtest); %d newest rows held back to judge; %d left out as copies "
        "of rows it is judged on",
        len(reference),
        len(older) + len(backtest),
        len(backtest),
        len(recent_evaluation),
        duplicates + reference_copies + len(newest) - len(backtest) - len(recent_evaluation),
    )
    return RetrainingData(
        reference=reference.reset_index(drop=True),
        older=older[keep].reset_index(drop=True),
        backtest=backtest[keep].reset_index(drop=True),
        frozen_test=frozen_test,
        recent_evaluation=recent_evaluation.reset_index(drop=True),
        window_rows=len(window),
        champion_version=str(champion.version),
    )


def search_budget(
    config: Any, data: RetrainingData, trials: int | None, timeout: float | None
) -> dict[str, tuple[int, float | None]]:
    """Trials and seconds per search: all of them on all history, or, when ``recent_only`` may
    apply, split in two (the recent rows get their own search). Never more than one budget."""
    total = trials or config.search.trials
    seconds = timeout or config.search.timeout_seconds
    policy = config.retraining
    if (
        "recent_only" not in policy.policies
        or len(data.window_train) < policy.min_recent_rows
        or total < 2
    ):
        return {"all_history": (total, seconds)}
    half = None if seconds is None else seconds / 2
    return {"all_history": (total - total // 2, half), "recent_only": (total // 2, half)}


@task(name="choose-training-data", cache_policy=NO_CACHE)
def choose_training_data(
    runtime: Runtime, data: RetrainingData, searches: dict[str, Any]
) -> tuple[PolicyChoice, PolicyData]:
    """The data policy that best predicts the newest labelled rows, and its training rows.

    Each policy's configuration (``searches[policy]``, else the all-history search's) is
    refitted on the reference and older recent rows and scored on the newest backtest rows (no
    row, nor a copy of it, on both sides): the search budget is shared, not multiplied.
    """
    config = runtime.config
    policy = config.retraining
    metric = config.gate_metric
    threads = runtime.settings.max_threads

    def fit_and_score(candidate: PolicyData, newest: pd.DataFrame) -> float:
        model = fit_best(
            prepare_features(candidate.frame, config),
            prepare_target(candidate.frame, config),
            searches.get(candidate.policy, searches["all_history"]),
            config,
            max_threads=threads,
            sample_weight=candidate.weights,
        )
        return score_rows(Scorer(model), newest, config, metric)

    choice = run_backtest(
        list(policy.policies),
        data.reference,
        data.older,
        data.backtest,
        [*config.columns.features, config.target],
        metric=metric,
        half_life_rows=policy.recency_half_life_rows,
        min_recent_rows=policy.min_recent_rows,
        fit_and_score=fit_and_score,
    )
    chosen = policy_data(
        choice.policy,
        data.reference,
        data.window_train,
        half_life_rows=policy.recency_half_life_rows,
        min_recent_rows=policy.min_recent_rows,
    )
    if chosen is None:  # cannot happen: the policy applied to fewer rows in the backtest
        chosen = PolicyData("all_history", data.train)
    get_run_logger().info("training data policy: %s", choice.text())
    return choice, chosen


@task(name="challenger-vs-champion", cache_policy=NO_CACHE)
def compare_retrained(
    runtime: Runtime, candidate: Any, data: RetrainingData
) -> tuple[GateDecision, dict[str, float], dict[str, float] | None]:
    """Both models on the frozen held-out set and on the newest labelled rows; the gate.

    Each comparison is paired (same rows) with a bootstrap interval; whether the frozen set
    still vetoes depends on the monitoring history (a confirmed drift lifts the veto).
    """
    config = runtime.config
    gate = config.gate
    metric = config.gate_metric
    champion = load_scorer(runtime.mlflow, runtime.name, data.champion_version, config)
    challenger = Scorer(candidate.model)

    def compare(frame: pd.DataFrame):
        return compare_models(
            challenger,
            champion,
            frame,
            config,
            metric=metric,
            alpha=gate.alpha,
            resamples=gate.bootstrap_resamples,
        )

    frozen = compare(data.frozen_test)
    recent = None if data.recent_evaluation.empty else compare(data.recent_evaluation)
    confirmed, note = drift_confirmed(
        monitoring.read_history(runtime.settings.monitoring_dir, runtime.name),
        batches=gate.drift_batches,
        confirmations=gate.drift_confirmations,
    )
    decision = decide_retrain_promotion(
        frozen=frozen,
        recent=recent,
        drift_confirmed=confirmed,
        drift_note=("drift confirmed: " if confirmed else "no confirmed drift: ") + note,
        min_improvement=gate.min_improvement,
        old_data_tolerance=gate.old_data_tolerance,
        catastrophic_loss=gate.catastrophic_loss,
    )
    get_run_logger().info("retraining gate: %s", decision.reason)
    candidate_old = score_model(challenger, data.frozen_test, config)
    candidate_recent = (
        None if recent is None else score_model(challenger, data.recent_evaluation, config)
    )
    return decision, candidate_old, candidate_recent


@task(name="rollback-check", cache_policy=NO_CACHE)
def rollback_if_worse(
    runtime: Runtime, labelled: pd.DataFrame, batch_id: str
) -> dict[str, Any] | None:
    """After a gate promotion, judge the new champion against the version it replaced on new
    labelled rows (features + target); roll back by itself when it is worse with confidence.

    Returns:
        The ledger entry of the rollback, or ``None``.
    """
    from tasks.registry import promote_version

    config = runtime.config
    gate = config.gate
    if config.target in labelled.columns:
        labelled = labelled[labelled[config.target].notna()]
    if len(labelled) < config.monitoring.performance.min_labelled_rows:
        return None
    champion = require_champion(runtime.mlflow, runtime.name)
    promotion = claims.promotion_to_check(
        ledger.read_entries(runtime.settings.ledger_dir, runtime.name), str(champion.version)
    )
    if promotion is None:
        return None
    previous = str(promotion["previous_champion"])
    paired = compare_models(
        load_scorer(runtime.mlflow, runtime.name, str(champion.version), config),
        load_scorer(runtime.mlflow, runtime.name, previous, config),
        labelled,
        config,
        metric=config.gate_metric,
        alpha=gate.alpha,
        resamples=gate.bootstrap_resamples,
    )
    logger = get_run_logger()
    if not paired.worse_by(0.0):
        logger.info(
            "v%s vs v%s (the version it replaced) on batch %s: %s; kept",
            champion.version,
            previous,
            batch_id,
            paired.text(),
        )
        return None
    reason = (
        f"automatic rollback: v{champion.version} is worse with confidence than v{previous}, the "
        f"version it replaced, on {len(labelled)} new labelled rows of batch {batch_id}: "
        f"{paired.text()}"
    )
    logger.warning(reason)
    return promote_version(
        runtime,
        previous,
        action="rolled_back",
        reason=reason,
        trigger={"kind": "automatic", "batch_id": batch_id, "flow_run_id": _flow_run_id()},
    )


@task(name="rollback-check-on-labels", cache_policy=NO_CACHE)
def rollback_on_new_labels(
    runtime: Runtime, new_labels: pd.DataFrame, labels_id: str
) -> dict[str, Any] | None:
    """:func:`rollback_if_worse` on the champion's logged rows that were labelled just now."""
    config = runtime.config
    champion = require_champion(runtime.mlflow, runtime.name)
    joined = joined_predictions(
        PredictionLog(runtime.settings.predictions_dir, runtime.name),
        LabelStore(runtime.settings.labels_dir, runtime.name),
    )
    if joined.empty:
        return None
    fresh = joined[
        joined[ROW_ID].isin(set(new_labels[ROW_ID]))
        & (joined[MODEL_VERSION].astype(str) == str(champion.version))
    ]
    rows = logged_features(fresh, config).assign(**{config.target: fresh[LABEL].to_numpy()})
    return rollback_if_worse.fn(runtime, rows.reset_index(drop=True), labels_id)


def announce_new_evidence(runtime: Runtime, batch_id: str) -> bool:
    """Emit ``loopml.retraining.evidence`` for a degraded labelled batch inside the cooldown,
    so recovery keeps going (its own automation starts the retraining). True when emitted."""
    from loopml import events
    from tasks.events import emit

    entries = ledger.read_entries(runtime.settings.ledger_dir, runtime.name)
    cooldown = runtime.config.retraining.cooldown_seconds
    if not claims.evidence_inside_cooldown(entries, datetime.now(UTC), cooldown, batch_id):
        return False
    emit(runtime.name, events.RETRAIN_EVIDENCE, {"batch_id": batch_id})
    return True


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.get_id()
