"""Applying loopml to a Prefect server: served deployments, in-flight runs, automations.

The Prefect calls import Prefect inside the functions that need it, so importing this module
stays free of Prefect and of side effects.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from flows.deployments import (
    deployment_name,
    evidence_trigger,
    retrain_trigger,
    served_flows,
)
from loopml.cli.stack.notifications import existing_notification_block, save_notification_block
from loopml.cli.stack.processes import ChildProcess, last_line
from loopml.config import ProjectConfig, load_config
from loopml.errors import StackError

# Prefect state types of a flow run that holds a slot or a process (strings: no import at load).
IN_FLIGHT_STATES = ("PENDING", "RUNNING", "CANCELLING")
AUTOMATIONS_DIR_VARIABLE = "LOOPML_AUTOMATIONS_DIR"
RUNNER_START_SIGNAL_VARIABLE = "LOOPML_RUNNER_START_SIGNAL"  # set by ``up`` for its runner


# --------------------------------------------------------------------------- discovery, ports


def discover_projects(project_dir: Path, names: Iterable[str] = ()) -> list[ProjectConfig]:
    """The projects to serve: ``names`` if given, else every ``configs/*.yaml`` in the folder.

    Raises:
        StackError: no project was found.
        ProjectNotFound, ConfigError: a named project is unknown or a config is invalid.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        wanted = sorted(path.stem for path in (project_dir / "configs").glob("*.yaml"))
    if not wanted:
        raise StackError(
            f"no project to serve: {project_dir / 'configs'} holds no *.yaml "
            "(create one with 'loopml init', or pass --project-dir)"
        )
    return [load_config(name, project_dir) for name in wanted]


# --------------------------------------------------------------------------- Prefect: deployments


def serve_projects(
    project_dir: Path,
    configs: list[ProjectConfig],
    limit: int | None = None,
    start_signal: Path | None = None,
    start_timeout: float = 300.0,
) -> None:
    """Serve the projects' deployments until interrupted (the runner child of ``loopml up``).

    The runner is given the flow objects (``Runner.add_flow``, what ``Flow.serve`` does), not
    deployments alone (``prefect.serve``): it then starts a run with Prefect's
    ``run_flow_in_subprocess`` instead of a ``python -m prefect.engine`` that loads the flow
    again, and that process is a fork of one with the flows and their libraries already
    imported (loopml/cli/stack/forkserver.py).

    With ``start_signal``, the flows are imported first (the slow part) and serving waits until
    that file exists: ``loopml up`` starts the runner beside the server and says when to go.

    Raises:
        StackError: ``start_signal`` did not appear within ``start_timeout``.
    """
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from loopml.cli.stack.forkserver import use_forkserver

    served = served_flows(project_dir, configs)
    if start_signal is not None:
        deadline = time.monotonic() + start_timeout
        while not start_signal.exists():
            if time.monotonic() > deadline:
                raise StackError(f"no start signal {start_signal} within {start_timeout:.0f} s")
            time.sleep(0.2)
    runner = Runner(pause_on_shutdown=True, limit=limit)  # no scheduled runs pile up when stopped
    for flow, options in served:
        runner.add_flow(flow, **options)
    # After the server's start and the deployments (the stack waits for both); its imports then
    # run while nothing or a first command runs, before the first deployment run asks for it.
    kept_spawn = use_forkserver()
    print(
        f"serving {', '.join(options['name'] for _, options in served)}; runs start "
        + (
            "as forks of a process with the flows imported"
            if kept_spawn is None
            else f"in fresh processes ({kept_spawn})"
        ),
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


def wait_for_deployments(
    names: list[str],
    timeout: float,
    runner: ChildProcess | None = None,
    updated_after: datetime | None = None,
) -> dict[str, str]:
    """Wait until every ``flow/deployment`` name exists (and, with ``updated_after``, has been
    applied since then, unpaused: the runner serves it); returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            for name in names:
                if name in found:
                    continue
                with contextlib.suppress(ObjectNotFound):
                    deployment = client.read_deployment_by_name(name)
                    fresh = updated_after is None or (
                        not deployment.paused
                        and deployment.updated is not None
                        and deployment.updated >= updated_after
                    )
                    if fresh:
                        found[name] = str(deployment.id)
            if len(found) == len(names):
                return found
            if runner is not None and not runner.running():
                raise StackError(
                    f"the deployment runner exited with code {runner.process.returncode}; "
                    f"see {runner.log_path}: {last_line(runner.log_tail())}"
                )
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(found))
                raise StackError(f"deployments not registered within {timeout:.0f} s: {missing}")
            time.sleep(0.25)


def _in_flight_filter(states: tuple[str, ...] = IN_FLIGHT_STATES) -> Any:
    """A flow-run filter for runs in ``states`` (by default those that hold a slot or a
    process, :data:`IN_FLIGHT_STATES`)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))))


def in_flight_runs(deployment_names: list[str], *, scheduled: bool = False) -> list[Any]:
    """Flow runs of these deployments that are pending, running or cancelling right now; with
    ``scheduled``, also those created but not yet picked up by the runner (it polls every few
    seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    names = [name.split("/", 1)[-1] for name in deployment_names]
    states = IN_FLIGHT_STATES + (("SCHEDULED",) if scheduled else ())
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=_in_flight_filter(states),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
        )


def _crash(client: Any, runs: list[Any], reason: str, counts: dict[str, int]) -> None:
    """Crashed for runs that started, Cancelled for runs claimed but never started."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed

    for run in runs:
        if run.state_type == StateType.PENDING:
            # Claimed but never started: nothing ran, so nothing crashed.
            state, key = Cancelled(message=reason), "cancelled"
        else:
            state, key = Crashed(message=reason), "crashed"
        client.set_flow_run_state(run.id, state, force=True)
        counts[key] += 1


def crash_runs(deployment_names: list[str] | None, reason: str) -> dict[str, int]:
    """Crash runs left in flight (of these deployments, or every run with ``None``) and free
    their deployments' concurrency slots.

    Why: the OSS server keeps deployment concurrency leases in memory. A run still in flight when
    the stack stops keeps its slot after a server restart (the lease that would have expired is
    gone), so every later inbox run is cancelled (CANCEL_NEW) and retrainings wait forever
    (ENQUEUE); a CLI run whose process died stays "Running" forever. Only call this while no
    process can still be driving those runs (no runner serves the deployments; with ``None``:
    the server has just started and nothing has used it yet).

    Returns:
        ``{"crashed": runs marked Crashed, "cancelled": pending runs cancelled,
        "released": slots freed}``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound

    in_flight = _in_flight_filter()
    counts = {"crashed": 0, "cancelled": 0, "released": 0}
    with get_client(sync_client=True) as client:
        if deployment_names is None:
            _crash(client, client.read_flow_runs(flow_run_filter=in_flight), reason, counts)
            deployments = client.read_deployments()
        else:
            deployments = []
            for name in deployment_names:
                try:
                    deployment = client.read_deployment_by_name(name)
                except ObjectNotFound:
                    continue
                runs = client.read_flow_runs(
                    flow_run_filter=in_flight,
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                )
                _crash(client, runs, reason, counts)
                deployments.append(deployment)
        for deployment in deployments:
            limit = deployment.global_concurrency_limit
            if limit is not None and limit.active_slots:
                client.update_global_concurrency_limit(
                    limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )
                counts["released"] += limit.active_slots
    return counts


def release_orphaned_runs(deployment_names: list[str], reason: str) -> dict[str, int]:
    """Crash the runs a stopped runner left in flight; free their slots (:func:`crash_runs`)."""
    return crash_runs(deployment_names, reason)


# --------------------------------------------------------------------------- Prefect: automations


def automations_dir() -> Path:
    """``deployments/automations`` of this checkout (or ``$LOOPML_AUTOMATIONS_DIR``)."""
    override = os.environ.get(AUTOMATIONS_DIR_VARIABLE)
    folder = (
        Path(override)
        if override
        else Path(__file__).resolve().parents[3] / "deployments" / "automations"
    )
    if not folder.is_dir():
        raise StackError(
            f"automation definitions not found in {folder}; set {AUTOMATIONS_DIR_VARIABLE}"
        )
    return folder


def notification_automations(folder: Path, block_id: str | None) -> list[dict[str, Any]]:
    """The automation files in ``folder``, their notifications sent through ``block_id``.

    The files are plain ``prefect automation create --from-file`` files with a
    ``${LOOPML_NOTIFICATION_BLOCK_ID}`` placeholder (for ``envsubst``); here the block id is
    set on each action that names one. Without a block those files are left out.

    Raises:
        StackError: a file does not hold automations.
    """
    definitions: list[dict[str, Any]] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "automations" in data:
            data = data["automations"]
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(item, dict) and item.get("name") for item in items):
            raise StackError(f"{path}: every automation needs a mapping with a name")
        actions = [action for item in items for action in item.get("actions") or []]
        needs_block = any("block_document_id" in action for action in actions)
        if needs_block and not block_id:
            continue
        for action in actions:
            if "block_document_id" in action:
                action["block_document_id"] = block_id
        definitions += items
    return definitions


def render_automations(
    folder: Path,
    configs: Iterable[ProjectConfig],
    *,
    project_dir: Path,
    retrain_deployment_ids: dict[str, str],
    notification_block_id: str | None,
) -> list[dict[str, Any]]:
    """Every automation definition: each project's retrain trigger, then the notifications.

    The retrain trigger is the one of flows/deployments.py, created here by name (not as the
    served deployment's own trigger) so that re-applying it is idempotent.
    """
    from uuid import UUID

    definitions: list[dict[str, Any]] = []
    for config in configs:
        for trigger in (
            retrain_trigger(config, project_dir),
            evidence_trigger(config, project_dir),
        ):
            trigger.set_deployment_id(UUID(retrain_deployment_ids[config.name]))
            automation = trigger.as_automation()
            definitions.append(automation.model_dump(mode="json", exclude={"owner_resource"}))
    return definitions + notification_automations(folder, notification_block_id)


def apply_automations(definitions: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Create or update each automation by name (idempotent: one automation per name).

    Returns ``[{"name", "id", "action": "created"|"updated"}]``.
    """
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    applied = []
    with get_client(sync_client=True) as client:
        for definition in definitions:
            desired = Automation(**AutomationCore.model_validate(definition).model_dump())
            existing = client.read_automations_by_name(desired.name)
            if existing:
                desired.id = existing[0].id
                desired.update()
                for duplicate in existing[1:]:  # left by an older, non-idempotent setup
                    client.delete_automation(duplicate.id)
                action = "updated"
            else:
                desired.create()
                action = "created"
            applied.append({"name": desired.name, "id": str(desired.id), "action": action})
    return applied


def apply_project_automations(
    project_dir: Path,
    configs: list[ProjectConfig],
    *,
    webhook_url: str | None = None,
    webhook_token: str | None = None,
    retrain_deployment_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create or update, by name, every project's retrain trigger and the notifications.

    Args:
        project_dir: the folder the retrain runs use as ``project_dir``.
        configs: the projects.
        webhook_url: point the notification block here first; without it the existing block
            is used, and without one the notification automations are skipped.
        webhook_token: the bearer token the block sends (the local sink's).
        retrain_deployment_ids: project -> deployment id; default: read ``retrain/retrain-NAME``.

    Raises:
        StackError: a project has no retrain deployment on the server.
    """
    block_id = (
        save_notification_block(webhook_url, webhook_token)
        if webhook_url
        else existing_notification_block()
    )
    if retrain_deployment_ids is None:
        names = [f"retrain/{deployment_name('retrain', config.name)}" for config in configs]
        found = wait_for_deployments(names, timeout=0)
        retrain_deployment_ids = {
            config.name: found[name] for config, name in zip(configs, names, strict=True)
        }
    definitions = render_automations(
        automations_dir(),
        configs,
        project_dir=project_dir,
        retrain_deployment_ids=retrain_deployment_ids,
        notification_block_id=block_id,
    )
    return {"automations": apply_automations(definitions), "notification_block_id": block_id}


@contextlib.contextmanager
def prefect_api(url: str, auth_string: str | None = None):
    """Point this process's Prefect client at ``url`` (with ``auth_string``, else the one in
    the environment), whenever Prefect was first imported."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    auth = auth_string or os.environ.get("PREFECT_API_AUTH_STRING")
    updates: dict[Any, Any] = {PREFECT_API_URL: url}
    if auth:
        updates[PREFECT_API_AUTH_STRING] = auth
    with temporary_settings(updates=updates):
        yield
