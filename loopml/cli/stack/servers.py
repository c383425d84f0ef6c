"""What the stack starts: each server's command line and the environment of every child."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from loopml.cli.stack.processes import HOST
from loopml.settings import Settings, mlflow_environment, prefect_environment


def child_environment(settings: Settings, prefect_api_url: str | None) -> dict[str, str]:
    """The environment of every child: this installation, telemetry off, the stack's server."""
    env = {**os.environ, **prefect_environment(settings), **mlflow_environment()}
    env.update(
        {
            "LOOPML_HOME": str(settings.home),
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "MLFLOW_REGISTRY_URI": settings.mlflow_registry_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # 0.5 GB instead of 1.8 GB
            "EVIDENTLY_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def prefect_server_command(port: int) -> list[str]:
    return [_console_script("prefect"), "server", "start", "--host", HOST, "--port", str(port)]


def mlflow_server_command(settings: Settings, port: int) -> list[str]:
    return [
        _console_script("mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        settings.mlflow_tracking_uri,
        "--registry-store-uri",
        settings.mlflow_registry_uri,
        # Clients write artifacts straight to this folder (same machine); the UI reads them.
        "--default-artifact-root",
        settings.artifacts_dir.as_uri(),
        "--no-serve-artifacts",
    ]


def evidently_ui_command(settings: Settings, port: int) -> list[str]:
    return [
        _console_script("evidently"),
        "ui",
        "--workspace",
        str(settings.evidently_workspace),
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def runner_command(project_dir: Path, projects: Iterable[str]) -> list[str]:
    command = [sys.executable, "-m", "loopml.cli", "serve", "--project-dir", str(project_dir)]
    for name in projects:
        command += ["--project", name]
    return command


def _console_script(name: str) -> str:
    """A console script of this environment (the venv's, not whatever PATH finds first)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def embedded_mlflow(settings: Settings) -> bool:
    """Whether MLflow is the embedded store (then ``up`` serves its UI) or a remote server."""
    return not settings.mlflow_tracking_uri.startswith(("http://", "https://"))
