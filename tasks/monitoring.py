"""Monitoring tasks: reference loading, drift, prediction drift, performance, Evidently report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from loopml import events, links, monitoring, reports
from loopml.data import iter_table_chunks, read_table, release_read_buffers
from loopml.drift.profile import ReferenceProfile, build_reference_profile
from loopml.drift.verdict import detect_drift
from loopml.errors import DataError, LoopmlError
from loopml.estimation.outputs import ModelOutputs, model_outputs
from loopml.features import carried_name, missing_columns, prepare_features, prepare_target
from loopml.labels import LabelStore, joined_predictions
from loopml.registry import download_reference, version_metrics
from loopml.runtime import Runtime
from loopml.scoring import (
    BATCH_ID,
    PREDICTION,
    PROBABILITY,
    PredictionLog,
    scores_from_probabilities,
)
from tasks.artifacts import artifact_key, markdown_table
from tasks.events import emit
from tasks.ingest import transient
from tasks.scoring import ServingModel

CHUNK_ROWS = 100_000  # rows read at a time: ~100 MB of pandas text each (the peak of a monitor)
TARGET = "__target__"  # the batch's own labels, kept apart from the features


@dataclass
class Reference:
    """What a batch is compared with: the champion's training data, profiled once."""

    profile: ReferenceProfile
    sample: pd.DataFrame
    importances: dict[str, float]
    metrics: dict[str, float]
    source: str
    holdout: pd.DataFrame | None = None
    run_id: str | None = None
    # The champion's predictions on ``sample`` and ``holdout``, made once: a Reference is
    # cached per champion version (see load_reference), so a later batch reuses them.
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)

    def predictions_of(self, rows: str, serving: ServingModel, config: Any) -> pd.DataFrame:
        """The champion's predictions on ``rows`` (``"sample"`` or ``"holdout"``)."""
        if rows not in self.predictions:
            self.predictions[rows] = score_frame(serving, getattr(self, rows), config)
        return self.predictions[rows]


@dataclass
class EvidentlyRun:
    """The report of one batch: its snapshot in the workspace and the UI pages that show it."""

    run_id: str | None
    links: dict[str, str]


@task(
    name="load-reference",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def load_reference(
    runtime: Runtime, serving: ServingModel, reference_path: str | None
) -> Reference:
    """The champion's reference (stored with its version), or a user-given reference table."""
    key = (runtime.settings.mlflow_registry_uri, runtime.name)
    identity = (
        serving.version,
        runtime.config.monitoring.sample_rows,
        reference_path and _file_identity(Path(reference_path)),
    )
    cached = _REFERENCES.pop(key, None)  # a stale one is let go before its successor loads
    if cached is not None and cached[0] == identity:
        _REFERENCES[key] = cached
        return cached[1]
    del cached
    reference = _load_reference(runtime, serving, reference_path)
    _REFERENCES[key] = (identity, reference)
    return reference


# A process that monitors many batches (the inbox runner) profiles each reference once: one
# entry per project and registry, keyed by the champion's version, the sample size and the
# reference file.
_REFERENCES: dict[tuple[str, str], tuple[Any, Reference]] = {}


def _file_identity(path: Path) -> tuple[str, int, int] | None:
    if not path.is_file():
        return None  # read_table says so in one sentence
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _load_reference(
    runtime: Runtime, serving: ServingModel, reference_path: str | None
) -> Reference:
    config = runtime.config
    champion = runtime.mlflow.get_model_version(runtime.name, serving.version)
    cache = runtime.settings.references_dir / runtime.name
    importances_file = download_reference(
        runtime.mlflow, champion.run_id, "importances.json", cache
    )
    # Permutation importance can dip below zero for useless columns: they weigh nothing.
    importances = {
        column: max(float(value), 0.0)
        for column, value in json.loads(importances_file.read_text()).items()
    }
    holdout = None
    if reference_path:
        # Only the columns compared (and the target), text as categories: memory stays low.
        frame = read_table(reference_path, columns=[*config.columns.features, config.target])
        absent = missing_columns(frame, config.columns.features)
        if absent:
            raise DataError(
                f"{reference_path}: the reference is missing feature column(s): {', '.join(absent)}"
            )
        sample = _sample(frame, config.monitoring.sample_rows)
        features = prepare_features(frame, config, compact=True)
        del frame  # what the features do not share (they keep its float columns) goes now
        profile = build_reference_profile(
            features, config.columns.numeric, config.columns.categorical
        )
        del features
        release_read_buffers()
        source = str(reference_path)
    else:
        profile_file = download_reference(runtime.mlflow, champion.run_id, "profile.json", cache)
        profile = ReferenceProfile.from_dict(json.loads(profile_file.read_text()))
        sample = _sample(
            pd.read_parquet(
                download_reference(runtime.mlflow, champion.run_id, "train.parquet", cache)
            ),
            config.monitoring.sample_rows,
        )
        source = f"models:/{runtime.name}/{serving.version} training data"
        # The held-out split: the performance reference of loopml's verdict, so the Evidently
        # report compares the batch's performance with the same rows.
        holdout = pd.read_parquet(
            download_reference(runtime.mlflow, champion.run_id, "test.parquet", cache)
        )
    return Reference(
        profile=profile,
        sample=sample,
        importances=importances,
        metrics=version_metrics(champion),
        source=source,
        holdout=None if holdout is None else _sample(holdout, config.monitoring.sample_rows),
        run_id=champion.run_id,
    )


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """At most ``rows`` rows of ``frame`` (the same ones every time), indexed from 0."""
    return frame.sample(n=min(rows, len(frame)), random_state=0).reset_index(drop=True)


@task(name="data-drift", cache_policy=NO_CACHE)
def check_drift(
    runtime: Runtime, reference: Reference, source: Path
) -> tuple[dict[str, Any], pd.DataFrame, int]:
    """Per-column and dataset drift over the whole batch, read in chunks; plus a row sample."""
    config = runtime.config
    sample = monitoring.ReservoirSample(config.monitoring.sample_rows)

    def prepared_chunks():
        for chunk in iter_table_chunks(source, CHUNK_ROWS, text_as_categories=True):
            prepared = prepare_features(chunk, config)
            if config.target in chunk.columns:
                target = chunk[config.target]
                is_category = isinstance(target.dtype, pd.CategoricalDtype)
                prepared[TARGET] = target.astype(object) if is_category else target
            sample.add(prepared)
            # The drift pass counts text columns on their category codes, not string by string.
            yield prepare_features(chunk, config, compact=True)

    verdict = detect_drift(
        reference.profile,
        prepared_chunks(),
        config.monitoring.drift,
        importances=reference.importances,
    )
    if sample.rows_seen == 0:
        raise DataError(f"{source}: the batch has no rows")
    result = verdict.to_dict()
    get_run_logger().info(
        "drift: %s (share %.2f of columns; drifted: %s)",
        verdict.status,
        verdict.drift_share,
        ", ".join(verdict.drifted_columns) or "none",
    )
    return result, sample.frame(), sample.rows_seen


@task(name="prediction-drift", cache_policy=NO_CACHE)
def check_predictions(
    runtime: Runtime, serving: ServingModel, reference: Reference, current_sample: pd.DataFrame
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame, ModelOutputs]:
    """Drift of the champion's outputs between reference and batch (samples); also the
    model's outputs on the batch's sample, which the performance estimate reads (one pass)."""
    config = runtime.config
    reference_predictions = reference.predictions_of("sample", serving, config)
    current_outputs = model_outputs(serving.model, prepare_features(current_sample, config), config)
    current_predictions = predictions_frame(serving, current_outputs, config)
    result = monitoring.prediction_drift(
        reference_predictions[PROBABILITY].to_numpy(),
        current_predictions[PROBABILITY].to_numpy(),
        config.monitoring.drift,
    )
    return result, reference_predictions, current_predictions, current_outputs


def score_frame(serving: ServingModel, frame: pd.DataFrame, config: Any) -> pd.DataFrame:
    """The champion's labels and scores (probability, or the predicted value) for ``frame``."""
    outputs = model_outputs(serving.model, prepare_features(frame, config), config)
    return predictions_frame(serving, outputs, config)


def predictions_frame(serving: ServingModel, outputs: ModelOutputs, config: Any) -> pd.DataFrame:
    """Labels and scores (as :func:`loopml.scoring.predict` gives them) from ``outputs``."""
    out = pd.DataFrame({PREDICTION: outputs.labels})
    if outputs.probabilities is None:
        out[PROBABILITY] = pd.to_numeric(out[PREDICTION], errors="coerce")
    else:
        out[PROBABILITY] = scores_from_probabilities(serving.model, outputs.probabilities, config)
    return out


def verdict_reason(config: Any, drift: dict[str, Any], performance: dict[str, Any] | None) -> str:
    """The rule that decided the batch under the project's drift policy (one line)."""
    policy = config.monitoring.drift
    return monitoring.verdict_reason(
        drift,
        performance,
        drift_share=policy.drift_share,
        weighted_drift_share=policy.weighted_drift_share,
    )


@task(name="performance", cache_policy=NO_CACHE)
def check_performance(
    runtime: Runtime,
    reference: Reference,
    current_sample: pd.DataFrame,
    current_predictions: pd.DataFrame,
    batch_id: str,
) -> dict[str, Any] | None:
    """Performance on labelled rows of this batch (target in the file, or labels that arrived)."""
    config = runtime.config
    if TARGET in current_sample.columns:
        truth = prepare_target(current_sample.rename(columns={TARGET: config.target}), config)
        labelled = truth.notna().to_numpy()
        y_true = truth[labelled]
        y_pred = current_predictions[PREDICTION][labelled]
        y_proba = (
            current_predictions[PROBABILITY][labelled] if config.task != "regression" else None
        )
    else:
        joined = joined_predictions(
            PredictionLog(runtime.settings.predictions_dir, runtime.name),
            LabelStore(runtime.settings.labels_dir, runtime.name),
        )
        if joined.empty or batch_id not in set(joined[BATCH_ID]):
            return None
        rows = joined[joined[BATCH_ID] == batch_id]
        y_true, y_pred = rows["target"], rows[PREDICTION]
        y_proba = rows[PROBABILITY] if PROBABILITY in rows and config.task != "regression" else None
    if len(y_true) == 0:
        return None
    return monitoring.judge_performance(
        config,
        reference.metrics,
        y_true.to_numpy(),
        y_pred.to_numpy(),
        None if y_proba is None else y_proba.to_numpy(),
    )


def report_location(runtime: Runtime, batch_id: str, stamp: str) -> Path:
    """Where a batch's Evidently report goes: known before it is built, so the verdict names it."""
    return runtime.settings.reports_dir / runtime.name / f"{stamp}-{batch_id}.html"


@task(name="evidently-report", cache_policy=NO_CACHE)
def evidently_report(
    runtime: Runtime,
    reference: Reference,
    current_sample: pd.DataFrame,
    reference_predictions: pd.DataFrame,
    current_predictions: pd.DataFrame,
    batch_id: str,
    path: Path,
    *,
    serving: ServingModel,
    drift: dict[str, Any],
    performance: dict[str, Any] | None,
    verdict: dict[str, Any],
    estimated: dict[str, Any] | None = None,
) -> EvidentlyRun:
    """Evidently's own report (drift, and performance when labels exist) on the config's
    ``monitoring.report_rows`` rows of each sample, written to ``path`` and linked (its page in
    the Evidently UI when the stack runs). It runs after the verdict is published (which does
    not wait for it) and carries loopml's verdict (the rule that fired) as metadata and tags.

    With labels, the reference is the champion's held-out split (the rows loopml's performance
    verdict compares with), scored here; else its training sample. ``verdict`` (the published
    one) gives the snapshot's tags; ``estimated`` (the estimation verdict) puts the estimated
    performance metric and its interval into the snapshot for the dashboard's panel.
    """
    config = runtime.config
    reason = verdict_reason(config, drift, performance)
    reference_rows = reference.sample
    labelled = TARGET in current_sample.columns and config.target in reference.sample.columns
    if labelled and reference.holdout is not None and config.target in reference.holdout:
        reference_rows = reference.holdout
        reference_predictions = reference.predictions_of("holdout", serving, config)
    estimates = {
        **_estimates_for_report(config.performance_metric, estimated),
        reports.WEIGHTED_DRIFT_COLUMN: drift.get("weighted_drift_share"),
    }
    # The report's own columns keep their names; a feature called ``prediction`` (or like any
    # of them) is shown as ``feature:prediction``.
    taken = {PREDICTION, PROBABILITY, config.target, *estimates}
    shown = {column: carried_name(column, taken) for column in config.columns.features}
    reference_frame = prepare_features(reference_rows, config).rename(columns=shown)
    current_frame = current_sample[config.columns.features].rename(columns=shown)
    for frame, predictions in (
        (reference_frame, reference_predictions),
        (current_frame, current_predictions),
    ):
        frame[PREDICTION] = predictions[PREDICTION].to_numpy()
        if config.is_binary:
            frame[PROBABILITY] = predictions[PROBABILITY].to_numpy()
    target = None
    if labelled:
        reference_frame[config.target] = prepare_target(reference_rows, config).to_numpy()
        current_frame[config.target] = prepare_target(
            current_sample.rename(columns={TARGET: config.target}), config
        ).to_numpy()
        target = config.target
        if config.task != "regression" and current_frame[target].nunique() < 2:
            # Evidently's classification metrics fail on one class ("Cannot find pos_label"):
            # the report keeps the drift sections; the verdict says the metric is undefined.
            get_run_logger().warning(
                "the labelled rows of batch %s hold one class only: performance is undefined, "
                "drift is still reported",
                batch_id,
            )
            reference_frame = reference_frame.drop(columns=target)
            current_frame = current_frame.drop(columns=target)
            target = None
    baseline = (estimated or {}).get("baseline")
    try:
        snapshot = reports.build_monitoring_report(
            reference_frame,
            current_frame,
            numeric_columns=[shown[column] for column in config.columns.numeric],
            categorical_columns=[shown[column] for column in config.columns.categorical],
            target=target,
            prediction=PREDICTION,
            probability=PROBABILITY if config.is_binary else None,
            task=config.task,
            positive_label=config.positive_label if config.is_binary else None,
            sample_rows=config.monitoring.report_rows,
            drift_policy=config.monitoring.drift,
            tags=reports.snapshot_tags(verdict),
            estimates=estimates,
            reference_estimates={reports.estimated_column(config.performance_metric): baseline},
            metadata={
                "loopml_verdict": reason,
                "batch_id": batch_id,
                "model_version": str(serving.version),
                "performance_reference": "held-out split"
                if reference_rows is not reference.sample
                else "training sample",
            },
        )
        reports.save_report_html(snapshot, path)
    except Exception as exc:
        # The verdict and its events went out before the report (automations may already act
        # on them) and are not undone: the one error line says both.
        raise LoopmlError(
            f"batch {batch_id}: the verdict was recorded and its events sent "
            f"({verdict['reason']}), but the Evidently report failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    run_id = project_id = None
    try:
        workspace = runtime.settings.evidently_workspace
        stored = reports.add_to_workspace(
            workspace,
            runtime.name,
            snapshot,
            prediction_column=PROBABILITY if config.is_binary else PREDICTION,
            performance_metric=config.performance_metric,
        )
        run_id, project_id = stored.run_id, stored.project_id
    except Exception as exc:  # the HTML report stands on its own; the dashboard is a bonus
        get_run_logger().warning("could not add the report to the Evidently workspace: %s", exc)
    urls = links.ui_urls(runtime.settings.stack_file)
    page_links = {
        "Evidently report": urls.evidently_snapshot(project_id, run_id),
        "Evidently dashboard": urls.evidently_dashboard(project_id),
    }
    create_link_artifact(
        key=artifact_key(config.name, "monitoring-report"),
        link=page_links["Evidently report"] or path.as_uri(),
        link_text=f"Evidently report for batch {batch_id}",
        description=f"Evidently report (data drift, prediction drift, performance): {reason}",
    )
    return EvidentlyRun(run_id=run_id, links={name: url for name, url in page_links.items() if url})


def _estimates_for_report(metric: str, estimated: dict[str, Any] | None) -> dict[str, Any]:
    """The performance metric's estimate and bounds under their ``--json`` names."""
    entry = ((estimated or {}).get("estimates") or {}).get(metric) or {}
    return {
        reports.estimated_column(metric, bound): entry.get(key)
        for bound, key in (("", "value"), ("lower", "lower"), ("upper", "upper"))
    }


@task(name="keep-labelled-batch", cache_policy=NO_CACHE)
def keep_labelled_batch(runtime: Runtime, current_sample: pd.DataFrame, batch_id: str) -> int:
    """A batch that came with its target joins the data the next retraining learns from."""
    if TARGET not in current_sample.columns:
        return 0
    labelled = current_sample.rename(columns={TARGET: runtime.config.target})
    labelled = labelled[labelled[runtime.config.target].notna()]
    LabelStore(runtime.settings.labels_dir, runtime.name).add_labelled_batch(labelled, batch_id)
    return len(labelled)


@task(name="publish-verdict", cache_policy=NO_CACHE)
def publish_verdict(runtime: Runtime, **parts: Any) -> dict[str, Any]:
    """Build the verdict from the checks' ``parts`` (``monitoring.verdict_record``), record it
    and emit the events the automations react to; returns the verdict as the flow's (and
    ``--json``'s) result. Its artifact follows the report (:func:`publish_verdict_artifact`)."""
    config = runtime.config
    reference: Reference = parts.pop("reference_data")
    urls = links.ui_urls(runtime.settings.stack_file)
    page_links = {
        "MLflow run": urls.mlflow_run(runtime.experiment_id, reference.run_id),
        "model version": urls.mlflow_model_version(config.name, parts["model_version"]),
        "Prefect flow run": urls.prefect_flow_run(flow_run.get_id()),
    }
    verdict = monitoring.verdict_record(
        project=runtime.name,
        reason=verdict_reason(config, parts["drift"], parts["performance"]),
        links={name: url for name, url in page_links.items() if url},
        **parts,
    )
    monitoring.record_result(runtime.settings.monitoring_dir, verdict)
    if verdict.drift_detected:
        emit(config.name, events.DRIFT_DETECTED, verdict.event_payload())
    if verdict.performance_degraded:
        emit(config.name, events.PERFORMANCE_DEGRADED, verdict.degradation_payload())
        if verdict.labelled_rows_kept:
            from tasks.retraining import announce_new_evidence

            announce_new_evidence(runtime, verdict.batch_id)
    result = verdict.to_dict()
    _emit_estimation_events(config.name, result, verdict.event_payload())
    return result


def _emit_estimation_events(project: str, result: dict[str, Any], payload: dict[str, Any]) -> None:
    """Estimated degradation (when no labels judged the batch) and stream alarms (when the
    batch's own verdict did not fire already)."""
    estimated = result.get("estimated_performance") or {}
    if estimated.get("degraded") and not result.get("performance"):
        metric = estimated["metric"]
        emit(
            project,
            events.PERFORMANCE_DEGRADED,
            {
                **payload,
                "estimated": True,
                "method": estimated.get("method"),
                "metric": metric,
                "drop": estimated["drop"],
                "confident_drop": estimated["confident_drop"],
                "current": (estimated["estimates"].get(metric) or {}).get("value"),
            },
        )
    stream = result.get("stream") or {}
    if stream.get("alarm") and not result["drift_detected"]:
        emit(
            project,
            events.DRIFT_DETECTED,
            {**payload, "stream": True, "streams": stream["alarmed_streams"]},
        )


def _estimation_markdown(result: dict[str, Any]) -> str:
    from loopml.estimation_view import estimation_lines

    return "".join(f"- {line}\n" for line in estimation_lines(result))


@task(name="publish-verdict-artifact", cache_policy=NO_CACHE)
def publish_verdict_artifact(runtime: Runtime, verdict: dict[str, Any]) -> None:
    """The verdict as the ``monitoring`` markdown artifact, once its report is built: with a
    running stack its links (the report among them) open UI pages over HTTP.

    Args:
        verdict: the monitor flow's result (:meth:`MonitoringVerdict.to_dict` with every link).
    """
    create_markdown_artifact(
        key=artifact_key(runtime.config.name, "monitoring"),
        markdown=_verdict_markdown(verdict),
        description=f"{runtime.config.name}: batch {verdict['batch_id']} monitoring verdict",
    )


def _verdict_markdown(verdict: dict[str, Any]) -> str:
    status = "DRIFT DETECTED" if verdict["drift_detected"] else "no drift"
    performance = verdict["performance"]
    perf_text = "no labels for this batch"
    if performance:
        metric = performance["metric"]
        perf_text = (
            f"{metric} {performance['current'].get(metric, float('nan')):.4f} vs reference "
            f"{(performance['reference'] or {}).get(metric) or float('nan'):.4f}"
            f" ({'DEGRADED' if performance['degraded'] else 'ok'})"
        )
    columns = verdict["columns"]
    drifted = verdict["drifted_columns"]
    rows = [
        {
            "column": column,
            "score": columns[column]["score"],
            "method": columns[column]["method"],
            "p_value": columns[column]["p_value"],
        }
        for column in drifted
    ]
    report = Path(verdict["report_path"])
    # Served over HTTP when the stack runs: a browser will not open a file:// link from a page.
    report_url = verdict["links"].get("Evidently report") or report.as_uri()
    weighted = verdict.get("weighted_drift_share")
    weighted_text = "" if weighted is None else f", weighted share {weighted:.2f}"
    page_links = links.markdown_links(verdict["links"])
    return (
        f"# Batch `{verdict['batch_id']}`: {status}\n\n"
        f"**Rule:** {verdict['reason']}\n\n"
        + (f"**Open:** {page_links}\n\n" if page_links else "")
        + f"- rows: {verdict['rows']}, model v{verdict['model_version']}\n"
        f"- drifted columns: {len(drifted)} "
        f"(share {verdict['drift_share']:.2f}{weighted_text})\n"
        f"- prediction drift: {verdict['prediction_drift'].get('drifted')}\n"
        f"- performance: {perf_text}\n"
        f"{_estimation_markdown(verdict)}"
        f"- report: [{report.name}]({report_url})\n\n"
        f"{markdown_table(rows)}\n"
    )
