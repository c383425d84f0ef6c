"""Loading registered models: every load goes through the artifact check, refusals are events."""

from __future__ import annotations

from typing import Any

from mlflow.entities.model_registry import ModelVersion

from loopml import events
from loopml.errors import ModelRefused
from loopml.registry import load_version_model
from loopml.runtime import Runtime
from tasks.events import emit


def load_checked(runtime: Runtime, model_version: ModelVersion) -> Any:
    """The model of ``model_version``, or :class:`ModelRefused` (and a ``loopml.model.refused``
    event) when its artifact is not the file registered or is in a pickle format."""
    try:
        return load_version_model(model_version, runtime.config.positive_label, runtime.mlflow)
    except ModelRefused as refusal:
        emit(
            runtime.name,
            events.MODEL_REFUSED,
            {"version": refusal.version, "reason": refusal.reason, "message": str(refusal)},
        )
        raise
