"""Every deployment, schedule and trigger of a project, defined once.

``loopml up`` / ``loopml serve`` serve :func:`served_flows`; their automations step creates
:func:`retrain_trigger` and :func:`evidence_trigger` on the server by name.
``deployments/prefect.yaml`` (``prefect deploy`` for a server with workers) spells the same
definitions in Prefect's YAML and is tested equal to them (tests/unit/test_deployments.py).

Prefect and the flows are imported inside the functions: the stack names deployments with
:func:`deployment_name` before it has applied the settings Prefect reads at import.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.events import RETRAIN_EVIDENCE, RETRAIN_TRIGGERS, project_resource_id

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger

    from loopml.config import ProjectConfig

FLOW_NAMES = ("train", "score", "monitor", "retrain", "inbox")


def deployment_name(flow_name: str, project: str) -> str:
    """The deployment of ``flow_name`` for ``project``, e.g. ``retrain-telco``."""
    return f"{flow_name}-{project}"


def retrain_trigger(config: ProjectConfig, project_dir: Path) -> DeploymentEventTrigger:
    """Drift or degradation of the project -> its retrain deployment, with the batch id.

    Reactive with threshold 1 and ``within`` = the cooldown: the server fires on the first
    matching event and drops the rest of the window, so a burst gives one retraining per
    cooldown. The flow adds its own guards (a batch id never retrains twice; one retraining
    per project at a time).
    """
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    name = config.name
    seconds = config.retraining.cooldown_seconds
    return DeploymentEventTrigger(
        name=f"loopml {name}: retrain on drift or degradation",
        description=(
            f"Runs retrain-{name} when {' or '.join(RETRAIN_TRIGGERS)} is emitted for "
            f"{project_resource_id(name)}; at most once per {seconds} s."
        ),
        enabled=True,
        posture=Posture.Reactive,
        match={"prefect.resource.id": project_resource_id(name)},
        expect=set(RETRAIN_TRIGGERS),
        for_each={"prefect.resource.id"},
        threshold=1,
        within=timedelta(seconds=seconds),
        parameters={
            "project": name,
            "project_dir": str(project_dir.resolve()),
            "batch_id": "{{ event.payload.get('batch_id') }}",
            "event": "{{ event.event }}",
        },
    )


def evidence_trigger(config: ProjectConfig, project_dir: Path) -> DeploymentEventTrigger:
    """New labelled evidence of degradation inside the cooldown -> the retrain deployment.

    The drift trigger's window drops every event until it closes; recovery must keep going
    while the champion is degraded, so the monitoring and label flows emit
    ``loopml.retraining.evidence`` for a degraded labelled batch inside the cooldown that no
    retraining has claimed yet, and this trigger (no window) runs a retraining for it. The flow
    still claims the batch (never two retrainings for one batch), one at a time per project.
    """
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    name = config.name
    return DeploymentEventTrigger(
        name=f"loopml {name}: retrain on new labelled evidence",
        description=(
            f"Runs retrain-{name} when {RETRAIN_EVIDENCE} is emitted for "
            f"{project_resource_id(name)}: a new degraded labelled batch inside the cooldown."
        ),
        enabled=True,
        posture=Posture.Reactive,
        match={"prefect.resource.id": project_resource_id(name)},
        expect={RETRAIN_EVIDENCE},
        for_each={"prefect.resource.id"},
        threshold=1,
        within=timedelta(seconds=0),
        parameters=retrain_trigger(config, project_dir).parameters,
    )


def project_flows(
    config: ProjectConfig, project_dir: Path
) -> list[tuple[Flow[..., Any], dict[str, Any]]]:
    """The five deployments of one project: each flow with its ``to_deployment`` options,
    named ``FLOW-PROJECT`` (see :data:`FLOW_NAMES`).

    Schedules come from the project's config. Retraining runs one at a time per project
    (``concurrency_limit`` 1, ENQUEUE); the inbox never overlaps itself (CANCEL_NEW). The
    monitor deployment has no schedule: it needs a batch (``data``), which the inbox deployment
    passes for every new file. The inbox deployment has no schedule either: ``loopml up``
    watches the inbox folders and starts a run only when a file is ready
    (loopml/cli/stack/inbox_watch.py), so an idle inbox makes no flow runs.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    from flows.inbox import inbox_flow
    from flows.monitoring import monitor_flow
    from flows.naming import tags_of
    from flows.retraining import retrain_flow
    from flows.scoring import score_flow
    from flows.training import train_flow

    name = config.name
    common: dict[str, Any] = {
        "parameters": {"project": name, "project_dir": str(project_dir.resolve())},
        "tags": tags_of(name),
        "entrypoint_type": EntrypointType.MODULE_PATH,  # flows/ is installed: no file paths
        "paused": False,
    }
    schedules = config.schedules
    return [
        (
            train_flow,
            {
                "name": deployment_name("train", name),
                "description": f"Train, register and gate a new {name} model.",
                **common,
            },
        ),
        (
            score_flow,
            {
                "name": deployment_name("score", name),
                "description": f"Score a {name} batch with the champion (pass data=FILE).",
                **common,
            },
        ),
        (
            monitor_flow,
            {
                "name": deployment_name("monitor", name),
                "description": (
                    f"Drift and performance of {name} batches against the champion's reference."
                ),
                **common,
            },
        ),
        (
            retrain_flow,
            {
                "name": deployment_name("retrain", name),
                "description": (
                    f"Retrain {name} on reference plus recent labelled data; runs on "
                    "schedule and when drift or degradation is detected."
                ),
                "cron": schedules.retrain,
                "concurrency_limit": ConcurrencyLimitConfig(
                    limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
                **common,
            },
        ),
        (
            inbox_flow,
            {
                "name": deployment_name("inbox", name),
                "description": f"Score and monitor new batches dropped into inbox/{name}/.",
                "concurrency_limit": ConcurrencyLimitConfig(
                    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
                ),
                **common,
            },
        ),
    ]


def project_deployments(config: ProjectConfig, project_dir: Path) -> list[RunnerDeployment]:
    """The five deployments of one project (:func:`project_flows`) as Prefect builds them."""
    return [flow.to_deployment(**options) for flow, options in project_flows(config, project_dir)]


def build_deployments(
    project_dir: Path, configs: Iterable[ProjectConfig]
) -> list[RunnerDeployment]:
    """Every project's deployments, as ``prefect.serve`` or ``prefect deploy`` take them."""
    return [
        deployment for config in configs for deployment in project_deployments(config, project_dir)
    ]


def served_flows(
    project_dir: Path, configs: Iterable[ProjectConfig]
) -> list[tuple[Flow[..., Any], dict[str, Any]]]:
    """Every project's flows with their deployment options, for ``Runner.add_flow``: the
    runner then runs them from the flow objects it holds (see loopml/cli/stack/forkserver.py)."""
    return [item for config in configs for item in project_flows(config, project_dir)]
