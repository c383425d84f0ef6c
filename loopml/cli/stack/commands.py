"""Stack commands: ``loopml up`` (the embedded stack), ``serve`` (its runner), ``automations``.

``loopml up`` starts its runner as ``python -m loopml.cli serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import JsonFlag, ProjectDir, Projects, process_settings, run
from loopml.errors import StackError


def up(
    prefect_port: Annotated[int, typer.Option("--prefect-port", help="Prefect UI/API.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="MLflow UI.")] = 5000,
    evidently_port: Annotated[int, typer.Option("--evidently-port", help="Evidently UI.")] = 8000,
    project: Projects = None,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Run the whole loop on this machine until Ctrl-C (servers, UIs, deployments).

    Starts a Prefect server, the MLflow and Evidently UIs, every project's deployments with
    their schedules and the automations. Batches dropped into $LOOPML_HOME/inbox/NAME/ are
    then validated, scored and monitored; drift triggers retraining. Binds 127.0.0.1; the
    URLs go to $LOOPML_HOME/stack.json.
    """
    from loopml.cli.stack import deployments, supervisor

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    def action() -> dict[str, Any]:
        settings = process_settings()
        folder = project_dir.expanduser().resolve()
        configs = deployments.discover_projects(folder, project or [])
        running = supervisor.Stack(
            settings=settings,
            project_dir=folder,
            configs=configs,
            ports=supervisor.StackPorts(prefect_port, mlflow_port, evidently_port),
            progress=progress,
        )
        record = running.start()
        _announce(record, json_output)
        return supervisor.run_until_stopped(running)

    def render(result: dict[str, Any]) -> None:
        typer.echo(f"stopped ({result.get('signal') or 'done'}); stack.json removed")

    run(action, json_output, render)


def down(json_output: JsonFlag = False) -> None:
    """Stop what runs for this LOOPML_HOME: a 'loopml up' (as Ctrl-C would) and the local
    Prefect server that commands start in the background."""
    from loopml.cli.stack.local_server import stop_local_server
    from loopml.cli.stack.processes import stop_stack
    from loopml.settings import load_settings

    def action() -> dict[str, Any]:
        settings = load_settings()
        up_pid = stop_stack(settings.stack_file)
        record = stop_local_server(settings)
        return {
            "home": str(settings.home),
            "up_stopped": up_pid,
            "server_stopped": None if record is None else record.get("api_url"),
        }

    def render(result: dict[str, Any]) -> None:
        if result["up_stopped"]:
            typer.echo(f"stopped loopml up (pid {result['up_stopped']})")
        if result["server_stopped"]:
            typer.echo(f"stopped the local Prefect server ({result['server_stopped']})")
        if not result["up_stopped"] and not result["server_stopped"]:
            typer.echo(f"nothing running for {result['home']}")

    run(action, json_output, render)


def serve(
    project: Projects = None,
    project_dir: ProjectDir = Path("."),
    limit: Annotated[
        int | None, typer.Option(help="Most flow runs at once (default: no limit).")
    ] = None,
) -> None:
    """Serve the projects' deployments in the foreground (schedules, triggered runs).

    Uses the Prefect server in PREFECT_API_URL, or the one 'loopml up' runs.
    """
    from loopml.cli.stack import deployments

    def action() -> dict[str, Any]:
        settings = process_settings()
        if not settings.prefect_api_url:
            raise StackError(
                "no Prefect server to serve on: set PREFECT_API_URL or start 'loopml up'"
            )
        import os

        folder = project_dir.expanduser().resolve()
        configs = deployments.discover_projects(folder, project or [])
        start_signal = os.environ.get(deployments.RUNNER_START_SIGNAL_VARIABLE)
        deployments.serve_projects(
            folder,
            configs,
            limit=limit,
            start_signal=Path(start_signal) if start_signal else None,
        )
        return {"served": [config.name for config in configs], "stopped": True}

    run(action, False, lambda result: None)


def automations(
    project: Projects = None,
    project_dir: ProjectDir = Path("."),
    webhook_url: Annotated[
        str | None,
        typer.Option(
            "--webhook-url",
            help="Where notifications go (a Custom Webhook block); default: keep the "
            "existing loopml-notifications block, or skip the notification automations.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create or update loopml's automations on the Prefect server (idempotent by name).

    Each project's retrain trigger and deployments/automations/; needs each project's retrain
    deployment (served by 'loopml serve' or deployed with prefect.yaml).
    """
    from loopml.cli.stack import deployments

    def action() -> dict[str, Any]:
        settings = process_settings()
        if not settings.prefect_api_url:
            raise StackError("no Prefect server: set PREFECT_API_URL or start 'loopml up'")
        folder = project_dir.expanduser().resolve()
        configs = deployments.discover_projects(folder, project or [])
        return deployments.apply_project_automations(folder, configs, webhook_url=webhook_url)

    def render(result: dict[str, Any]) -> None:
        for automation in result["automations"]:
            typer.echo(f"{automation['action']}: {automation['name']} ({automation['id']})")

    run(action, json_output, render)


def _announce(record: dict[str, Any], json_output: bool) -> None:
    """URLs as soon as everything answers (the final result only comes at shutdown)."""
    import json

    if json_output:
        typer.echo(json.dumps(record, default=str))
        return
    typer.echo(f"loopml is up: {', '.join(record['projects'])} ({record['startup_seconds']} s)")
    for label, key in (
        ("Prefect UI", "prefect_ui_url"),
        ("Prefect API", "prefect_api_url"),
        ("MLflow UI", "mlflow_url"),
        ("Evidently UI", "evidently_url"),
        ("inbox", "inbox_dir"),
        ("notifications", "notifications_file"),
        ("logs", "logs_dir"),
    ):
        typer.echo(f"  {label:<14} {record[key]}")
    typer.echo("  drop batches as inbox/NAME/FILE.csv (write elsewhere or as .part, then rename)")
    typer.echo(
        f"  the UIs ask for credentials: see {record['prefect_auth_string_file']} (Prefect UI "
        "password: prefect_auth_string; MLflow UI: mlflow_username / mlflow_password)"
    )
    typer.echo("Ctrl-C stops everything (or 'loopml down' from another shell).")
