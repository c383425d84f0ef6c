"""What the stack starts: each server's command line and the environment of every child."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from loopml.cli.stack.processes import HOST
from loopml.credentials import Credentials, write_private
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


# Loop intervals of the Prefect server's services that an idle single-machine stack need not
# run every few seconds (Prefect's defaults: 5-20 s). Each wake-up queries the database;
# together they cost an idle server ~0.3% of a core (benchmarks/idle_cpu_benchmark.py). What
# they do: mark runs Late, expire pauses, reclaim expired concurrency leases (the retrain
# slot), mark silent workers/deployments offline (the runner polls every 5 s; the timeout is
# 60 s), clean up cancelled runs and worker queues, schedule new deployments' runs. The event
# persister and task-run recorder keep their defaults: events and task runs show in the UI and
# the API within seconds. A value the user sets in the environment wins.
QUIET_SERVICE_SECONDS = {
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "30",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "30",
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "30",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "30",
}


def prefect_server_environment(
    settings: Settings, port: int, credentials: Credentials
) -> dict[str, str]:
    """The local Prefect server's environment: locked to its own UI, on 127.0.0.1.

    The API answers only callers that send the auth string (the UI asks for it as its
    password); cross-origin requests are allowed from the UI's own origin only. Prefect has no
    Host-header check: a DNS-rebinding page would still lack the auth string.
    """
    origin = f"http://{HOST}:{port}"
    env = child_environment(settings, None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    env.update(
        {
            "PREFECT_SERVER_UI_ENABLED": "true",
            # The UI asks the browser to call this URL; without it, it says port 4200
            # whatever --port was given.
            "PREFECT_UI_API_URL": f"{origin}/api",
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_API_AUTH_STRING": credentials.prefect_auth_string,
            "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": origin,
        }
    )
    for name, seconds in QUIET_SERVICE_SECONDS.items():
        env.setdefault(name, seconds)
    return env


def prefect_server_command(port: int) -> list[str]:
    return [_console_script("prefect"), "server", "start", "--host", HOST, "--port", str(port)]


def mlflow_server_environment(settings: Settings, credentials: Credentials) -> dict[str, str]:
    """The MLflow UI's environment: MLflow's basic-auth app, its user store under the home.

    Why: without it any local process or web page could move the ``champion`` alias with one
    anonymous POST. The CLI and the flows use the store directly, not this server, so only
    the browser (which asks for the user and password) and HTTP clients see the lock. MLflow
    reads the user store's location only from the ini file named by
    ``MLFLOW_AUTH_CONFIG_PATH``; the admin user is created on the first start.
    """
    auth_dir = settings.home / "mlflow-auth"
    auth_dir.mkdir(parents=True, exist_ok=True)
    auth_dir.chmod(0o700)
    config = auth_dir / "basic_auth.ini"
    write_private(
        config,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{auth_dir / 'users.db'}\n"
        f"admin_username = {credentials.mlflow_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    env = child_environment(settings, None)
    env.update(
        {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.mlflow_password,
            # The auth app's CSRF protection needs a key that is stable across restarts.
            "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(
                f"flask:{credentials.mlflow_password}".encode()
            ).hexdigest(),
        }
    )
    return env


def evidently_ui_environment(settings: Settings, credentials: Credentials) -> dict[str, str]:
    """The Evidently UI's environment: writes need its secret (``evidently-secret`` header);
    set through the environment, not ``--secret``, which ``ps`` would show."""
    return {**child_environment(settings, None), "EVIDENTLY_SECRET": credentials.evidently_secret}


def mlflow_server_command(settings: Settings, port: int) -> list[str]:
    return [
        _console_script("mlflow"),
        "server",
        "--app-name",
        "basic-auth",
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
