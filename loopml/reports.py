"""Evidently reports for people: HTML files and the Evidently UI workspace.

The verdicts that trigger retraining come from :mod:`loopml.drift` (full data, small-batch-safe);
the report here is what a person opens to see why. It runs Evidently 0.7.23's own presets on at
most ``sample_rows`` rows of each side, so its cost does not grow with the batch (see
docs/monitoring.md for the sampling error bound).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from loopml.label_rule import label_key

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

TaskKind = Literal["classification", "regression"]
_P_VALUE_MARK = "p_value"


def build_monitoring_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric_columns: Sequence[str],
    categorical_columns: Sequence[str],
    target: str | None = None,
    prediction: str | None = None,
    probability: str | None = None,
    task: TaskKind = "classification",
    positive_label: Any = None,
    sample_rows: int | None = 50_000,
    drift_policy: Any = None,
    random_state: int = 0,
    tags: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
    estimates: Mapping[str, float | None] | None = None,
    reference_estimates: Mapping[str, float | None] | None = None,
) -> Snapshot:
    """Run Evidently's data drift preset, plus the task's performance preset when labels exist.

    ``ClassificationPreset`` (or ``RegressionPreset``) is added when both ``target`` and
    ``prediction`` are columns of both frames. Each side is sampled down to ``sample_rows`` rows
    (``None``: no sampling) with ``random_state``, so the report costs the same on any batch.

    Args:
        reference: Reference data (the champion's training data).
        current: The batch to monitor.
        numeric_columns: Feature columns Evidently treats as numerical.
        categorical_columns: Feature columns Evidently treats as categorical.
        target: Ground-truth column, when labels have arrived.
        prediction: Predicted label (classification) or value (regression) column.
        probability: Predicted probability of ``positive_label`` (binary classification).
        task: "classification" or "regression".
        positive_label: The positive class (binary classification); without it the
            classification is treated as multiclass.
        sample_rows: At most this many rows of each side go into the report.
        random_state: Seed of the row sample.
        tags: Tags of the snapshot (the Evidently UI lists and filters reports by them).
        metadata: Key-value notes shown with the snapshot, e.g. loopml's own verdict, so the
            report says what loopml decided and why.
        estimates: loopml's own values of the batch: its estimated performance (no labels
            needed) and its weighted drift share, e.g. ``{"estimated_roc_auc": 0.81,
            "estimated_roc_auc_lower": 0.77, ..., "weighted_drift_share": 0.55}``. Each known
            value becomes a constant column of the current side, reported with Evidently's
            ``MeanValue`` (without its default test), so the dashboard can plot it per batch.
        reference_estimates: the same keys on the reference side (the estimate on the
            champion's held-out rows); a key missing here is NaN there.

    Returns:
        The Evidently snapshot (``save_report_html``, ``evidently_column_drift``,
        ``add_to_workspace`` take it).
    """
    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Regression,
        Report,
    )
    from evidently.metrics import MeanValue, ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset, RegressionPreset

    # Evidently refuses a column without a value on one side ("An empty column ... was
    # provided"); loopml's verdict judges such a column on its missing share, the report skips it.
    numeric_columns, categorical_columns = (
        [column for column in columns if _has_values(column, reference, current)]
        for columns in (numeric_columns, categorical_columns)
    )
    features = [*numeric_columns, *categorical_columns]
    labelled = (
        target is not None
        and prediction is not None
        and all(
            column in frame for frame in (reference, current) for column in (target, prediction)
        )
    )
    metrics: list[Any] = [DataDriftPreset(columns=features, **_preset_options(drift_policy))]
    definition_kwargs: dict[str, Any] = {
        "numerical_columns": list(numeric_columns),
        "categorical_columns": list(categorical_columns),
    }
    kept = list(features)
    binary = False
    if labelled:
        kept += [target, prediction]
        if task == "regression":
            definition_kwargs["regression"] = [Regression(target=target, prediction=prediction)]
            metrics.append(RegressionPreset())
        elif binary := positive_label is not None:
            with_probability = probability is not None and all(
                probability in frame for frame in (reference, current)
            )
            if with_probability:
                kept.append(probability)
            definition_kwargs["classification"] = [
                BinaryClassification(
                    target=target,
                    prediction_labels=prediction,
                    prediction_probas=probability if with_probability else None,
                    pos_label=_label_as_text(positive_label),
                )
            ]
            metrics.append(ClassificationPreset())
        else:
            definition_kwargs["classification"] = [
                MulticlassClassification(target=target, prediction_labels=prediction)
            ]
            metrics.append(ClassificationPreset())
    # Prediction drift: the model's score (or predicted value) compared like a feature, so the
    # dashboard has its own panel for it.
    output = probability if probability is not None else prediction
    if output is not None and all(output in frame for frame in (reference, current)):
        if output not in kept:
            kept.append(output)
        metrics.append(ValueDrift(column=output))
        if output not in features:
            numeric_output = output == probability or task == "regression"
            kind = "numerical_columns" if numeric_output else "categorical_columns"
            definition_kwargs[kind].append(output)
    reference_sample = _sample(reference[kept], sample_rows, random_state)
    current_sample = _sample(current[kept], sample_rows, random_state)
    if binary:
        # Evidently reads a binary score against text labels only: with True/False or 1/2
        # labels it takes the score for a label and fails in its confusion matrix.
        for sample in (reference_sample, current_sample):
            for column in (target, prediction):
                sample[column] = _labels_as_text(sample[column])
    known = {name: value for name, value in (estimates or {}).items() if value is not None}
    for name, value in known.items():
        current_sample[name] = float(value)
        baseline = (reference_estimates or {}).get(name)
        reference_sample[name] = np.nan if baseline is None else float(baseline)
        definition_kwargs["numerical_columns"].append(name)
        metrics.append(MeanValue(column=name, tests=[]))
    definition = DataDefinition(**definition_kwargs)
    report = Report(metrics, include_tests=True, tags=list(tags), metadata=dict(metadata or {}))
    with warnings.catch_warnings():
        # A reference side without an estimate (NaN column) makes Evidently divide by zero
        # in its column statistics; the report shows it as missing, which it is.
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        return report.run(
            current_data=Dataset.from_pandas(current_sample, data_definition=definition),
            reference_data=Dataset.from_pandas(reference_sample, data_definition=definition),
        )


def _has_values(column: str, *frames: pd.DataFrame) -> bool:
    return all(frame[column].notna().any() for frame in frames)


def _labels_as_text(labels: pd.Series) -> pd.Series:
    """Non-text class labels as their canonical text (``True`` -> ``"true"``, ``1.0`` ->
    ``"1"``: :func:`loopml.label_rule.label_key`); text labels and nulls stay as they are."""
    if pd.api.types.is_string_dtype(labels):
        return labels
    return labels.map(_label_as_text, na_action="ignore").astype(object)


def _label_as_text(label: Any) -> Any:
    return label if isinstance(label, str) else label_key(label)


def _preset_options(policy: Any) -> dict[str, Any]:
    """DataDriftPreset options matching a DriftPolicy's effect sizes and dataset rule, so the
    report and loopml's verdict read alike (the policy's significance test has no Evidently
    counterpart: on small batches the report may flag a column the verdict leaves out)."""
    if policy is None:
        return {}
    numeric = {"wasserstein": "wasserstein", "psi": "psi"}[policy.numeric_method]
    categorical = {"jensenshannon": "jensenshannon", "psi": "psi"}[policy.categorical_method]
    return {
        "drift_share": policy.drift_share,
        "num_method": numeric,
        "cat_method": categorical,
        "num_threshold": policy.effect_threshold("", "numeric"),
        "cat_threshold": policy.effect_threshold("", "categorical"),
    }


def _sample(frame: pd.DataFrame, sample_rows: int | None, random_state: int) -> pd.DataFrame:
    if sample_rows is None or len(frame) <= sample_rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=sample_rows, random_state=random_state).reset_index(drop=True)


def snapshot_tags(verdict: Mapping[str, Any]) -> list[str]:
    """The tags a batch's snapshot carries, from loopml's published verdict (the
    ``loopml monitor --json`` keys): ``batch:ID``, ``model:vN`` and ``verdict:WORDS``, where
    WORDS joins with ``+`` what fired (``drift``, ``degraded`` or ``estimated-degraded``), else
    ``ok`` (or ``insufficient-data``). The Evidently UI lists and filters reports by them."""
    fired = []
    if verdict.get("drift_detected"):
        fired.append("drift")
    if verdict.get("performance_degraded"):
        fired.append("degraded")
    elif verdict.get("estimated_degraded"):
        fired.append("estimated-degraded")
    if not fired:
        fired.append("insufficient-data" if verdict.get("status") == "insufficient_data" else "ok")
    return [
        f"batch:{verdict['batch_id']}",
        f"model:v{verdict['model_version']}",
        f"verdict:{'+'.join(fired)}",
    ]


def save_report_html(snapshot: Snapshot, path: str | Path) -> Path:
    """Write the snapshot as a standalone HTML report (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path


def evidently_column_drift(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    """Evidently's own drift results from a snapshot.

    Returns:
        ``{"columns": {column: {"method", "score", "threshold", "drifted"}},
        "dataset": {"count", "share", "drift_share", "drift_detected"}}``. A column's verdict is
        the status of Evidently's test when the report has tests, else Evidently's rule
        (p-value methods: drift below the threshold, KS at or below; distances: at or above).
    """
    content = snapshot.dict()
    failed_metric_ids = {
        test["metric_config"]["metric_id"]
        for test in content.get("tests", [])
        if test.get("status") == "FAIL"
    }
    tested_metric_ids = {test["metric_config"]["metric_id"] for test in content.get("tests", [])}
    columns: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    for metric in content["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            method, threshold, score = config["method"], config["threshold"], float(metric["value"])
            if metric["id"] in tested_metric_ids:
                drifted = metric["id"] in failed_metric_ids
            else:
                drifted = _evidently_rule(method, score, threshold)
            columns[config["column"]] = {
                "method": method,
                "score": score,
                "threshold": threshold,
                "drifted": bool(drifted),
            }
        elif kind == "DriftedColumnsCount":
            value = metric["value"]
            dataset = {
                "count": int(value["count"]),
                "share": float(value["share"]),
                "drift_share": float(config["drift_share"]),
                "drift_detected": bool(value["share"] >= config["drift_share"]),
                "columns": config.get("columns"),
            }
    checked = dataset.pop("columns", None)
    if checked:  # the prediction's own ValueDrift is not one of the dataset's columns
        columns = {name: value for name, value in columns.items() if name in checked}
    return {"columns": columns, "dataset": dataset}


def _evidently_rule(method: str, score: float, threshold: float) -> bool:
    if _P_VALUE_MARK in method:
        return score <= threshold if method.startswith("K-S") else score < threshold
    return score >= threshold


def add_to_workspace(
    workspace_path: str | Path,
    project_name: str,
    snapshot: Snapshot,
    *,
    prediction_column: str | None = None,
    performance_metric: str | None = None,
) -> WorkspaceRun:
    """Store a snapshot in the Evidently workspace so ``evidently ui --workspace PATH`` shows it.

    The project is found by name, or created once when missing; its dashboard gets the
    :func:`dashboard_panels` it lacks (without panels the Evidently UI shows an empty dashboard
    however many snapshots it holds).

    Returns:
        The ids of the project and of the stored run (snapshot): the UI's pages are addressed
        by them.
    """
    workspace = _workspace(str(workspace_path))
    projects = workspace.search_project(project_name)
    project = projects[0] if projects else workspace.create_project(project_name)
    # Panels a newer loopml knows are added to older projects too (matched by title).
    present = {panel.title for panel in project.dashboard.model().panels}
    for panel in dashboard_panels(prediction_column, performance_metric):
        if panel.title not in present:
            project.dashboard.add_panel(panel, tab=DASHBOARD_TAB)
    return WorkspaceRun(str(project.id), str(workspace.add_run(project.id, snapshot).id))


def _workspace(path: str) -> Any:
    """Evidently's local workspace at ``path``, for what loopml does with it: projects, their
    dashboards and runs, each read from and written to disk at every call (so a process that
    lives on, the warm process or ``loopml up``'s runner, sees what others add).

    Why not ``Workspace.create``: its constructor also builds the workspace's datasets manager,
    which parses every snapshot the workspace holds (about 1.3 MB each) and keeps them in
    memory: 4.0 s and 278 MB at 46 batches (measured), more with every batch, in every process
    that monitors. loopml adds runs without their data, which never touches datasets; this
    workspace has only the file-backed state its project and run methods use.
    """
    from evidently.ui.storage.local.base import LocalState
    from evidently.ui.workspace import Workspace

    Path(path).mkdir(parents=True, exist_ok=True)
    workspace = Workspace.__new__(Workspace)  # Workspace.__init__ minus the datasets manager
    workspace.path = path
    workspace.state = LocalState(path)
    return workspace


@dataclass(frozen=True)
class WorkspaceRun:
    """Where a snapshot went in the Evidently workspace."""

    project_id: str
    run_id: str


DASHBOARD_TAB = "Monitoring"
# loopml's metric names -> Evidently 0.7 metric types (the ones its presets compute).
_EVIDENTLY_METRICS = {
    "roc_auc": "RocAuc",
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1Score",
    "f1_macro": "F1Score",
    "precision_macro": "Precision",
    "recall_macro": "Recall",
    "log_loss": "LogLoss",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R2Score",
}


WEIGHTED_DRIFT_COLUMN = "weighted_drift_share"  # the ``loopml monitor --json`` key


def estimated_column(metric: str, bound: str = "") -> str:
    """The name of an estimate in the snapshot (``estimated_roc_auc``, ``..._lower``,
    ``..._upper``): the ``loopml monitor --json`` key of the same value."""
    return f"estimated_{metric}" + (f"_{bound}" if bound else "")


def dashboard_panels(prediction_column: str | None, performance_metric: str | None) -> list[Any]:
    """The project's panels over time: drift share, drifted columns, prediction drift, the
    performance metric loopml judges by (realised, when Evidently computes it) and beside it
    the same metric estimated without labels, with its interval.

    Points come from each snapshot's metrics, so a panel fills as batches are monitored.
    """
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    # (title, subtitle, [(legend, Evidently metric, its labels)])
    specs: list[tuple[str, str, list[tuple[str, str, dict[str, str]]]]] = [
        (
            "Drift share",
            "share of the checked columns that drifted, per batch",
            [("share", "DriftedColumnsCount", {"value_type": "share"})],
        ),
        (
            "Weighted drift share",
            "loopml's share with each drifted column weighted by its importance to the model "
            "(the rule that flags a batch when its key columns move)",
            [("weighted share", "MeanValue", {"column": WEIGHTED_DRIFT_COLUMN})],
        ),
        (
            "Drifted columns",
            "number of drifted columns, per batch",
            [("count", "DriftedColumnsCount", {"value_type": "count"})],
        ),
    ]
    if prediction_column:
        specs.append(
            (
                "Prediction drift",
                f"drift score of the model's output ({prediction_column})",
                [(prediction_column, "ValueDrift", {"column": prediction_column})],
            )
        )
    evidently_metric = _EVIDENTLY_METRICS.get(performance_metric or "")
    if performance_metric and evidently_metric:
        specs.append(
            (
                f"Performance: {performance_metric}",
                "on the batch's labelled rows (batches without labels add no point)",
                [(f"{performance_metric} (realised)", evidently_metric, {})],
            )
        )
    if performance_metric:
        specs.append(
            (
                f"Performance: {performance_metric} (estimated)",
                "estimated from the model's outputs without labels, on every batch the "
                "champion has an estimator for; the bounds are the estimate's interval",
                [
                    (
                        f"{performance_metric} {bound or '(estimated)'}",
                        "MeanValue",
                        {"column": estimated_column(performance_metric, bound)},
                    )
                    for bound in ("", "lower", "upper")
                ],
            )
        )
    return [
        line_plot_panel(
            title,
            [
                PanelMetric(legend=legend, metric=metric, metric_labels=labels)
                for legend, metric, labels in series
            ],
            description=subtitle,
            size="half",
        )
        for title, subtitle, series in specs
    ]
