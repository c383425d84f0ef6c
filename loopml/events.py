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


LABEL_MAX_CHARACTERS = 200


def event_resource(project: str, payload: dict) -> dict[str, str]:
    """The project's resource with the payload's plain values as labels (``loopml.KEY``).

    Why: the Prefect UI's event Details tab shows the resource's labels, not the payload (that
    is only in the Raw tab); the payload stays whole for automations' templates. Numbers keep
    4 significant digits, lists of plain values are joined, nested values stay in the payload.
    """
    labels = dict(project_resource(project))
    for key, value in payload.items():
        text = _label_text(value)
        if text is not None:
            labels[f"loopml.{key}"] = text[:LABEL_MAX_CHARACTERS]
    return labels


def _label_text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, list | tuple) and all(
        isinstance(item, str | int | float) and not isinstance(item, bool) for item in value
    ):
        return ", ".join(_label_text(item) or "" for item in value)
    return None
