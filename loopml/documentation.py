"""What each registered version documents about itself, and the commands that read it back.

``document_version`` computes, on the held-out rows, the slice analysis, the fairness audit
(with sensitive columns), the partial dependence of the top features and the model card, and
writes them as files for the version's MLflow run. ``explain_file`` is ``loopml explain``;
``champion_slices`` is ``loopml status --slices``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from loopml import explain, fairness, slices
from loopml.config import ProjectConfig
from loopml.data import batch_id, read_table, write_table
from loopml.errors import DataError, RegistryError
from loopml.features import prepare_features, prepare_target
from loopml.figures import png_bytes, render_ahead
from loopml.model_card import (
    PARTIAL_DEPENDENCE_COLUMNS,
    ModelCardContent,
    build_model_card,
    card_profile_figure,
)
from loopml.registry import (
    CHAMPION,
    download_reference,
    load_version_model,
    require_champion,
    version_by_alias,
)
from loopml.scoring import predict, row_ids

SLICES_FILE = "slices.json"
FAIRNESS_FILE = "fairness.json"
MODEL_CARD_FILE = "model_card.html"
PARTIAL_DEPENDENCE_FILE = "partial_dependence.png"

logger = logging.getLogger(__name__)


def predicted_labels(model: Any, features: pd.DataFrame, config: ProjectConfig) -> np.ndarray:
    """The labels (or values) the model predicts, as ``loopml score`` writes them (a binary
    model applies its decision threshold inside)."""
    labels, _ = predict(model, features, config)
    return np.asarray(labels)


@dataclass
class VersionDocuments:
    """The documentation of one version: analyses, the files holding them and the decision."""

    slices: dict[str, Any]
    fairness: dict[str, Any] | None
    decision: Any
    files: dict[str, Path] = field(default_factory=dict)


def document_version(
    *,
    client: MlflowClient,
    config: ProjectConfig,
    version: str,
    run_id: str,
    model: Any,
    family: str,
    params: dict[str, Any],
    train: pd.DataFrame,
    test: pd.DataFrame,
    test_metrics: dict[str, float],
    cv_metrics: dict[str, float],
    search: dict[str, Any],
    figures: dict[str, Any],
    importances: dict[str, float],
    data_hash: str,
    suite_hash: str,
    decision: Any,
    folder: Path,
) -> VersionDocuments:
    """Slices, fairness audit (and gate), partial dependence and model card, written to ``folder``.

    The fairness gate (``gate.fairness``) compares the candidate's audit with the current
    champion's on the same held-out rows and folds the verdict into ``decision``.

    Raises:
        DataError: a sensitive column is missing from the held-out rows.
    """
    test = test.reset_index(drop=True)
    features = prepare_features(test, config)
    truth = prepare_target(test, config).to_numpy()
    profile = card_profile_figure(train, importances, config)
    # The figure worker draws the card's profile while this process makes and draws the
    # partial dependence figure and cuts the slices.
    render_ahead([profile])
    top = explain.partial_dependence_columns(importances, config, PARTIAL_DEPENDENCE_COLUMNS)
    partial_dependence = None
    if top:
        try:
            partial_dependence = explain.partial_dependence_figure(model, features, top, config)
        except (TypeError, ValueError) as exc:  # a model scikit-learn cannot probe
            logger.warning("no partial dependence plot: %s", exc)
    labels = predicted_labels(model, features, config)
    slice_analysis = slices.analyse_slices(test, truth, labels, config)
    audit = None
    if config.sensitive_columns:
        audit = fairness.audit_fairness(test, truth, labels, config)
        if config.gate.fairness is not None:
            champion_audit = _champion_audit(client, config, version, test, features, truth)
            check = fairness.check_fairness(audit, champion_audit, config.gate.fairness)
            decision = fairness.with_fairness_gate(decision, check)
    files = {SLICES_FILE: _write_json(slice_analysis, folder / SLICES_FILE)}
    if audit is not None:
        files[FAIRNESS_FILE] = _write_json(audit, folder / FAIRNESS_FILE)
    if partial_dependence is not None:
        path = folder / PARTIAL_DEPENDENCE_FILE
        path.write_bytes(png_bytes(partial_dependence))  # the model card embeds the same PNG
        files[PARTIAL_DEPENDENCE_FILE] = path
    card = build_model_card(
        ModelCardContent(
            config=config,
            version=str(version),
            run_id=run_id,
            family=family,
            params=params,
            train=train,
            test_metrics=test_metrics,
            cv_metrics=cv_metrics,
            data_hash=data_hash,
            suite_hash=suite_hash,
            search=search,
            slices=slice_analysis,
            fairness=audit,
            importances=importances,
            decision=decision.to_dict() if hasattr(decision, "to_dict") else decision,
            figures=figures,
        ),
        partial_dependence=partial_dependence,
        profile=profile,
    )
    card_path = folder / MODEL_CARD_FILE
    card_path.write_text(card, encoding="utf-8")
    files[MODEL_CARD_FILE] = card_path
    return VersionDocuments(slice_analysis, audit, decision, files)


def _champion_audit(
    client: MlflowClient,
    config: ProjectConfig,
    candidate_version: str,
    test: pd.DataFrame,
    features: pd.DataFrame,
    truth: np.ndarray,
) -> dict[str, Any] | None:
    champion = version_by_alias(client, config.name, CHAMPION)
    if champion is None or str(champion.version) == str(candidate_version):
        return None
    model = load_version_model(champion, config.positive_label, client)
    labels = predicted_labels(model, features, config)
    return fairness.audit_fairness(test, truth, labels, config)


def _write_json(payload: Any, path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def run_json(client: MlflowClient, run_id: str, file_name: str) -> dict[str, Any] | None:
    """A JSON artifact at the root of a run, or ``None`` when the run has none by that name."""
    names = {entry.path for entry in client.list_artifacts(run_id)}
    if file_name not in names:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        return json.loads(Path(client.download_artifacts(run_id, file_name, scratch)).read_text())


def champion_slices(
    client: MlflowClient, config: ProjectConfig, top: int = 10, data: Path | None = None
) -> dict[str, Any]:
    """The champion's worst slices (``loopml slices``): of its held-out rows, or of a labelled
    batch ``data`` (a table with the target column) scored now.

    Raises:
        RegistryError: no champion, or (without ``data``) a champion registered before slices.
        DataError: ``data`` cannot be read, or lacks the target or feature columns.
    """
    name = config.name
    champion = require_champion(client, name)
    if data is None:
        analysis = run_json(client, champion.run_id, SLICES_FILE)
        if analysis is None:
            raise RegistryError(
                f"champion v{champion.version} of {name!r} has no slice analysis: "
                "retrain it with this loopml version, or pass --data with a labelled batch"
            )
        source = "held-out rows"
    else:
        frame = read_table(data)
        if config.target not in frame.columns:
            raise DataError(f"{data} has no target column {config.target!r}: slices need labels")
        frame = frame.loc[prepare_target(frame, config).notna()].reset_index(drop=True)
        if frame.empty:
            raise DataError(f"{data} has no labelled rows")
        model = load_version_model(champion, config.positive_label, client)
        features = prepare_features(frame, config)
        labels = predicted_labels(model, features, config)
        truth = prepare_target(frame, config).to_numpy()
        analysis = slices.analyse_slices(frame, truth, labels, config)
        source = str(data)
    return {
        "version": str(champion.version),
        "source": source,
        "metric": analysis["metric"],
        "overall": analysis["overall"],
        "rows": analysis["rows"],
        "worst_slices": slices.worst_slices(analysis, top),
        "unranked_slices": [row for row in analysis["slices"] if not row["ranked"]],
    }


def explain_file(
    client: MlflowClient,
    config: ProjectConfig,
    data: Path,
    out: Path,
    *,
    references_dir: Path,
    top: int = explain.TOP_REASONS,
) -> dict[str, Any]:
    """``loopml explain``: per-row contributions of the champion's prediction, written to ``out``.

    Raises:
        RegistryError: the project has no champion.
        DataError: the file cannot be read or lacks feature columns.
    """
    champion = require_champion(client, config.name)
    frame = read_table(data)
    absent = [column for column in config.columns.features if column not in frame.columns]
    if absent:
        raise DataError(f"{data} is missing feature column(s): {', '.join(absent)}")
    model = load_version_model(champion, config.positive_label, client)
    background = pd.read_parquet(
        download_reference(client, champion.run_id, "train.parquet", references_dir / config.name)
    )
    explanation = explain.explain_rows(model, frame, config, background=background)
    # The ids ``loopml score`` gives the same file's rows, so explanations join predictions
    # and labels.
    ids = row_ids(frame, config, batch_id(data), 0)
    table = explain.explanation_frame(explanation, frame, ids, top)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(table, out)
    return {
        "project": config.name,
        "model_version": str(champion.version),
        "rows": int(len(table)),
        "out": str(out),
        "method": explanation.method,
        "explained_output": explanation.output_name,
        "top_features": list(explain.global_importance(explanation))[:top],
        "columns": list(explanation.contributions.columns),
    }
