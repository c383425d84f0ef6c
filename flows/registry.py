"""Hand-driven alias moves as flows, so they show in the Prefect UI with their events."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.naming import run_name, untagged_tasks
from loopml import ledger
from loopml.errors import RegistryError
from loopml.registry import CHAMPION, version_by_alias
from loopml.runtime import open_runtime
from tasks.registry import promote_version


@flow(name="promote", flow_run_name=run_name("promote"), log_prints=False)
@untagged_tasks
def promote_flow(
    project: str, version: str, reason: str = "manual promotion", project_dir: str = "."
) -> dict[str, Any]:
    """Make ``version`` the champion."""
    runtime = open_runtime(project, project_dir)
    return promote_version(
        runtime, version, action="promoted", reason=reason, trigger={"kind": "manual"}
    )


@flow(name="rollback", flow_run_name=run_name("rollback"), log_prints=False)
@untagged_tasks
def rollback_flow(project: str, project_dir: str = ".") -> dict[str, Any]:
    """Give ``champion`` back to the version that held it before the current one."""
    runtime = open_runtime(project, project_dir)
    current = version_by_alias(runtime.mlflow, project, CHAMPION)
    if current is None:
        raise RegistryError(f"project {project!r} has no champion to roll back")
    previous = ledger.previous_champion(
        ledger.read_entries(runtime.settings.ledger_dir, project), str(current.version)
    )
    if previous is None:
        raise RegistryError(
            f"project {project!r}: champion v{current.version} has no earlier champion to return to"
        )
    return promote_version(
        runtime,
        previous,
        action="rolled_back",
        reason=f"rollback from v{current.version}",
        trigger={"kind": "manual"},
    )
