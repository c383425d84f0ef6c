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
# Not in the original contract: a registered artifact refused before loading (tampered file,
# pickle format) and a version whose registration was interrupted, marked failed by a later run.
MODEL_REFUSED = "loopml.model.refused"
MODEL_FAILED = "loopml.model.failed"

RETRAIN_TRIGGERS = (DRIFT_DETECTED, PERFORMANCE_DEGRADED)


def project_resource_id(project: str) -> str:
    return f"loopml.project.{project}"


def project_resource(project: str) -> dict[str, str]:
    return {
        "prefect.resource.id": project_resource_id(project),
        "prefect.resource.name": project,
        "loopml.project": project,
    }
