"""Event names and resources of the user contract (PRODUCT.md). Emission lives in tasks/."""

from __future__ import annotations

DATA_VALIDATED = "loopml.data.validated"
DATA_QUARANTINED = "loopml.data.quarantined"
DRIFT_DETECTED = "loopml.drift.detected"
PERFORMANCE_DEGRADED = "loopml.performance.degraded"
MODEL_REGISTERED = "loopml.model.registered"
MODEL_PROMOTED = "loopml.model.promoted"
MODEL_ROLLED_BACK = "loopml.model.rolled_back"
# New labelled evidence that the champion is degraded, inside the retraining cooldown.
RETRAIN_EVIDENCE = "loopml.retraining.evidence"

RETRAIN_TRIGGERS = (DRIFT_DETECTED, PERFORMANCE_DEGRADED)


def project_resource_id(project: str) -> str:
    return f"loopml.project.{project}"


def project_resource(project: str) -> dict[str, str]:
    return {
        "prefect.resource.id": project_resource_id(project),
        "prefect.resource.name": project,
        "loopml.project": project,
    }
