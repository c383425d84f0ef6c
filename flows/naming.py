"""Flow run names that say what a run does (``monitor-telco-b88327``), not Prefect's random pair.

Each flow passes ``flow_run_name=run_name("monitor")``; the name is built when the run starts,
from its parameters: the project, then the batch id, the data file's name or the version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect.runtime import flow_run


def run_name(kind: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable naming a run ``KIND-PROJECT[-DETAIL]``."""

    def name() -> str:
        return run_label(kind, flow_run.parameters or {})

    return name


def run_label(kind: str, parameters: dict) -> str:
    """``KIND-PROJECT[-DETAIL]`` from a run's parameters (the detail: ``batch_id``, else the
    stem of ``data``, else ``v`` + ``version``)."""
    parts = [kind, str(parameters.get("project") or "loopml")]
    if parameters.get("batch_id"):
        parts.append(str(parameters["batch_id"]))
    elif parameters.get("data"):
        parts.append(Path(str(parameters["data"])).stem)
    elif parameters.get("version"):
        parts.append(f"v{parameters['version']}")
    return "-".join(parts)
