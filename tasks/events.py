"""Emitting loopml's Prefect events (resource ``loopml.project.NAME``)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from prefect.events import emit_event
from prefect.logging import get_run_logger

from loopml.events import event_resource


def emit(project: str, event: str, payload: dict[str, Any]) -> str | None:
    """Emit ``event`` for ``project``; returns the event id (``None`` when events are off)."""
    safe_payload = json.loads(json.dumps(payload, default=str))
    emitted = emit_event(
        event=event, resource=event_resource(project, safe_payload), payload=safe_payload
    )
    # Outside a run there is no run logger; the event still went out.
    with contextlib.suppress(Exception):
        get_run_logger().info("event %s emitted for project %s", event, project)
    return None if emitted is None else str(emitted.id)
