"""After registration: slices, fairness audit, explanations and the model card of a version,
logged to its MLflow run and linked from a Prefect artifact."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from loopml.documentation import MODEL_CARD_FILE, document_version
from loopml.gate import GateDecision
from loopml.registry import TAG_PREFIX, RegisteredVersion, get_version
from loopml.runtime import Runtime
from loopml.slices import slices_markdown
from tasks.artifacts import artifact_key, markdown_table
from tasks.training import Evaluation, TrainedModel


@task(name="document-version", cache_policy=NO_CACHE)
def document_candidate(
    runtime: Runtime,
    registered: RegisteredVersion,
    candidate: TrainedModel,
    evaluation: Evaluation,
    *,
    decision: GateDecision,
) -> GateDecision:
    """Log the version's slices, fairness audit and model card; return the gate decision with
    the fairness gate (``gate.fairness``) folded in."""
    config = runtime.config
    tags = get_version(runtime.mlflow, config.name, registered.version).tags or {}
    with tempfile.TemporaryDirectory() as scratch:
        documents = document_version(
            client=runtime.mlflow,
            config=config,
            version=registered.version,
            run_id=registered.run_id,
            model=candidate.model,
            family=candidate.family,
            params=candidate.params,
            train=evaluation.train,
            test=evaluation.test,
            test_metrics=evaluation.metrics,
            cv_metrics=candidate.cv_metrics,
            search=candidate.search.summary() if hasattr(candidate.search, "summary") else {},
            figures=evaluation.figures,
            importances=evaluation.importances,
            data_hash=tags.get(f"{TAG_PREFIX}training_data_hash", "unknown"),
            suite_hash=tags.get(f"{TAG_PREFIX}suite_hash", "unknown"),
            decision=decision,
            folder=Path(scratch),
        )
        for path in documents.files.values():
            runtime.mlflow.log_artifact(registered.run_id, str(path))
    artifact_uri = runtime.mlflow.get_run(registered.run_id).info.artifact_uri
    create_markdown_artifact(
        key=artifact_key(config.name, "model-card"),
        markdown=_summary_markdown(config.name, registered, documents, artifact_uri),
        description=f"{config.name} v{registered.version}: model card, slices, fairness",
    )
    get_run_logger().info(
        "documented %s v%s: %s", config.name, registered.version, ", ".join(documents.files)
    )
    return documents.decision


def _summary_markdown(
    project: str, registered: RegisteredVersion, documents: Any, artifact_uri: str
) -> str:
    links = "\n".join(f"- [{name}]({artifact_uri}/{name})" for name in documents.files)
    parts = [
        f"# {project} v{registered.version}: model card\n",
        f"Model card: [{MODEL_CARD_FILE}]({artifact_uri}/{MODEL_CARD_FILE}) "
        f"(MLflow run `{registered.run_id}`, one self-contained HTML page)\n",
        links,
        "\n## Worst held-out slices\n",
        slices_markdown(documents.slices),
    ]
    if documents.fairness:
        rows = [
            {"column": column, **entry["differences"]}
            for column, entry in documents.fairness["columns"].items()
        ]
        parts += ["\n## Fairness audit\n", markdown_table(rows)]
    fairness_check = documents.decision.comparisons.get("fairness")
    if fairness_check:
        parts += [f"\n**Fairness gate**: {fairness_check['reason']}"]
    return "\n".join(parts) + "\n"
